"""API keys with read and write scopes, one check for gRPC and HTTP.

Keys come from three places, all optional: ``api_key`` (the original single key; it may read and write),
``api_keys`` (entries ``SCOPES:KEY``, usually from ``VITRINE_GATEWAY_API_KEYS``) and ``api_keys_file`` (one
``SCOPES:KEY`` entry a line, ``#`` comments; keep it mode 0600). ``SCOPES`` is ``read``, ``write`` or
``read+write``. With no key configured the API is open. Keys are compared by SHA-256 digest, so the lookup
takes the same time whichever key matches, and neither a key nor its digest is ever logged or echoed.

Every API method needs one scope (``METHOD_SCOPES``): reads (Search, SimilarItems, GetProducts, Recommend
and the product image) need ``read``, writes (UpsertProducts, DeleteProducts, RecordEvents) ``write``. A
method missing from the table needs ``write``: a new RPC is closed to read-only keys until someone
decides otherwise. A missing or unknown key is UNAUTHENTICATED; a known key without the scope is
PERMISSION_DENIED.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path

from gateway.errors import API_KEY_MESSAGE, GatewayError, PermissionDenied, Unauthenticated


class Scope(str, Enum):
    READ = "read"
    WRITE = "write"


METHOD_SCOPES: dict[str, Scope] = {
    "Search": Scope.READ,
    "SimilarItems": Scope.READ,
    "GetProducts": Scope.READ,
    "GetProductImage": Scope.READ,
    "UpsertProducts": Scope.WRITE,
    "DeleteProducts": Scope.WRITE,
    "Recommend": Scope.READ,
    "RecordEvents": Scope.WRITE,  # events are stored data; a storefront that records them needs write
}
"""The scope each API method needs, by its gRPC method name (HTTP routes count under the same names)."""


class KeyFileError(ValueError):
    """A key entry or file that cannot be used; the message names the line, never the key."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_entry(entry: str, where: str = "api_keys") -> tuple[str, frozenset[Scope]]:
    scopes, sep, key = entry.strip().partition(":")
    if not sep or not key.strip():
        raise KeyFileError(f"{where}: expected SCOPES:KEY with SCOPES read, write or read+write")
    try:
        parsed = frozenset(Scope(s.strip().lower()) for s in scopes.split("+"))
    except ValueError:
        raise KeyFileError(f"{where}: unknown scope; use read, write or read+write") from None
    return key.strip(), parsed


class ApiKeys:
    """The configured keys by digest; ``check`` is the one decision both transports ask for."""

    def __init__(self, keys: Mapping[str, Iterable[Scope]] | None = None) -> None:
        self._scopes: dict[bytes, frozenset[Scope]] = {}
        for key, scopes in (keys or {}).items():
            digest = _digest(key)
            self._scopes[digest] = self._scopes.get(digest, frozenset()) | frozenset(scopes)

    @classmethod
    def from_config(cls, api_key: str = "", entries: Iterable[str] = (), path: str = "") -> ApiKeys:
        keys: dict[str, set[Scope]] = {}

        def add(key: str, scopes: Iterable[Scope]) -> None:
            keys.setdefault(key, set()).update(scopes)

        if api_key:
            add(api_key, Scope)
        for i, entry in enumerate(entries):
            add(*parse_entry(entry, f"api_keys entry {i}"))
        if path:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyFileError(f"cannot read the API key file {path}: {exc}") from None
            for n, line in enumerate(lines, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    add(*parse_entry(line, f"{path}:{n}"))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._scopes)

    def check(self, token: str | None, method: str) -> GatewayError | None:
        """None when ``token`` (the bearer credential) may call ``method``, else the error to answer."""
        return self.check_scope(token, METHOD_SCOPES.get(method, Scope.WRITE), method)

    def check_scope(self, token: str | None, needed: Scope, what: str) -> GatewayError | None:
        if not self.enabled:
            return None
        scopes = self._scopes.get(_digest(token), frozenset()) if token else frozenset()
        if not scopes:
            return Unauthenticated(API_KEY_MESSAGE)
        if needed not in scopes:
            return PermissionDenied(
                f"this API key may not call {what[:80]}: it needs the {needed.value} scope"
            )
        return None


def bearer(value: str | None) -> str:
    """The credential of an ``authorization: Bearer <key>`` header (empty when absent or another scheme)."""
    value = value or ""
    return value[7:] if value[:7].lower() == "bearer " else ""
