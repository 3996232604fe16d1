"""The gateway's API keys: which scope each method needs, one check for gRPC and HTTP.

The key format, the file and environment sources, the digest comparison and the refusal's words are the
kernel's (``vitrine.api_keys``, shared with the index service); on gRPC the kernel's interceptor
(``vitrine.grpc_server``) applies ``scope_of`` to every ProductSearch method. The gateway adds its one
extra source, ``api_key`` (the original single key; it may read and write), and the table of scopes:
reads (Search, SimilarItems, GetProducts, Recommend, GetServing and the product image) need ``read``,
writes (UpsertProducts, DeleteProducts, RecordEvents) ``write``. A method missing from the table needs
``write``: a new RPC is closed to read-only keys until someone decides otherwise. A missing or unknown
key is UNAUTHENTICATED; a known key without the scope is PERMISSION_DENIED.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.errors import GatewayError, PermissionDenied, Unauthenticated
from vitrine import api_keys
from vitrine.api_keys import Denied, KeyFileError, Scope, refusal_message

__all__ = ["METHOD_SCOPES", "ApiKeys", "KeyFileError", "Scope", "scope_of"]

METHOD_SCOPES: dict[str, Scope] = {
    "Search": Scope.READ,
    "SimilarItems": Scope.READ,
    "GetProducts": Scope.READ,
    "GetProductImage": Scope.READ,
    "GetServing": Scope.READ,
    "UpsertProducts": Scope.WRITE,
    "DeleteProducts": Scope.WRITE,
    "Recommend": Scope.READ,
    "RecordEvents": Scope.WRITE,  # events are stored data; a storefront that records them needs write
}
"""The scope each API method needs, by its gRPC method name (HTTP routes count under the same names)."""


def scope_of(method: str) -> Scope:
    return METHOD_SCOPES.get(method, Scope.WRITE)


class ApiKeys:
    """The configured keys (``keys``, the kernel's, which the gRPC interceptor takes); ``check`` is the
    decision as a gateway error, for the HTTP routes."""

    def __init__(self, keys: api_keys.ApiKeys) -> None:
        self.keys = keys

    @classmethod
    def from_config(cls, api_key: str = "", entries: Iterable[str] = (), path: str = "") -> ApiKeys:
        legacy = [f"read+write:{api_key}"] if api_key else []
        return cls(api_keys.ApiKeys.from_config([*legacy, *entries], path))

    @property
    def enabled(self) -> bool:
        return self.keys.enabled

    def check(self, token: str | None, method: str) -> GatewayError | None:
        """None when ``token`` (the bearer credential) may call ``method``, else the error to answer."""
        return self.check_scope(token, scope_of(method), method)

    def check_scope(self, token: str | None, needed: Scope, what: str) -> GatewayError | None:
        denied = self.keys.check(token or "", needed)
        if denied is None:
            return None
        error = Unauthenticated if denied is Denied.UNAUTHENTICATED else PermissionDenied
        return error(refusal_message(denied, needed, what))
