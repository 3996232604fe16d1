"""API keys with read and write scopes, independent of any transport.

The format every Vitrine service reads: entries ``SCOPES:KEY`` where ``SCOPES`` is ``read``, ``write`` or
``read+write``, given as a list (usually from a ``VITRINE_<SERVICE>_API_KEYS`` variable, comma-separated)
and/or a file of one entry a line (``#`` comments; keep it mode 0600). With no key configured a service
is open. Keys are held and compared by SHA-256 digest; neither a key nor its digest is ever logged or
echoed, and errors name the entry's place (``file:line``), never its text.

A service maps each of its methods to the scope it needs and answers a missing or unknown key with
UNAUTHENTICATED and a known key without the scope with PERMISSION_DENIED (``check``), in the words of
``refusal_message``. On gRPC, ``vitrine.grpc_server`` does this for every service; the gateway's HTTP
routes ask ``check`` themselves.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from vitrine.errors import MAX_ECHO_CHARS

UNAUTHENTICATED_MESSAGE = "missing or wrong API key (authorization: Bearer)"


class Scope(str, enum.Enum):
    READ = "read"
    WRITE = "write"


class KeyFileError(ValueError):
    """A key entry or file that cannot be used; the message names where, never the key."""


class Denied(enum.Enum):
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def parse_entry(entry: str, where: str) -> tuple[str, frozenset[Scope]]:
    scopes, sep, key = entry.strip().partition(":")
    if not sep or not key.strip():
        raise KeyFileError(f"{where}: expected SCOPES:KEY with SCOPES read, write or read+write")
    try:
        parsed = frozenset(Scope(s.strip().lower()) for s in scopes.split("+"))
    except ValueError:
        raise KeyFileError(f"{where}: unknown scope; use read, write or read+write") from None
    return key.strip(), parsed


class ApiKeys:
    """Configured keys by digest, and the one decision: may this bearer token use this scope?"""

    def __init__(self, keys: Mapping[str, Iterable[Scope]] | None = None) -> None:
        self._scopes: dict[bytes, frozenset[Scope]] = {}
        for key, scopes in (keys or {}).items():
            digest = _digest(key)
            self._scopes[digest] = self._scopes.get(digest, frozenset()) | frozenset(scopes)

    @classmethod
    def from_config(cls, entries: Iterable[str] = (), path: str = "") -> ApiKeys:
        keys: dict[str, set[Scope]] = {}
        for i, entry in enumerate(entries):
            key, scopes = parse_entry(entry, f"api_keys entry {i}")
            keys.setdefault(key, set()).update(scopes)
        if path:
            try:
                lines = Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyFileError(f"cannot read the API key file {path}: {type(exc).__name__}") from None
            for n, line in enumerate(lines, start=1):
                if line.strip() and not line.lstrip().startswith("#"):
                    key, scopes = parse_entry(line, f"{path}:{n}")
                    keys.setdefault(key, set()).update(scopes)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._scopes)

    def check(self, token: str, needed: Scope) -> Denied | None:
        """None when ``token`` (a bearer credential, empty when absent) may use ``needed``."""
        if not self.enabled:
            return None
        scopes = self._scopes.get(_digest(token), frozenset()) if token else frozenset()
        if not scopes:
            return Denied.UNAUTHENTICATED
        return None if needed in scopes else Denied.PERMISSION_DENIED


def bearer(value: str | None) -> str:
    """The credential of an ``authorization: Bearer <key>`` header (empty when absent or another scheme)."""
    value = value or ""
    return value[7:] if value[:7].lower() == "bearer " else ""


def refusal_message(denied: Denied, needed: Scope, what: str) -> str:
    """What a caller refused by ``check`` is told; ``what`` names the method or route it called."""
    if denied is Denied.UNAUTHENTICATED:
        return UNAUTHENTICATED_MESSAGE
    return f"this API key may not call {what[:MAX_ECHO_CHARS]}: it needs the {needed.value} scope"
