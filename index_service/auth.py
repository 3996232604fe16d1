"""API keys for the index service: read and write scopes, checked before a request is even decoded.

Reads (Search, Get, GetStats, ListCollections, ListAliases) need ``read``; every other IndexService
method needs ``write``, so a method added later is closed to read-only keys until someone decides
otherwise. Health and reflection stay open (the launcher's readiness probe uses health). Keys and their
format are ``vitrine.api_keys``, the check on every call ``vitrine.grpc_server``'s; keys come from
``--api-keys``/``VITRINE_INDEX_API_KEYS`` or ``--api-keys-file`` and are off by default.
"""

from __future__ import annotations

from vitrine.api_keys import Scope

READ_METHODS = frozenset({"Search", "Get", "GetStats", "ListCollections", "ListAliases"})


def scope_of(method: str) -> Scope:
    return Scope.READ if method in READ_METHODS else Scope.WRITE
