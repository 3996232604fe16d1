"""The FastAPI application: routes with their key checks, the page, the one error shape, body limits.

Every refusal, whether from the call layer, a route's decoding or the framework (malformed JSON, wrong
types, unknown routes, a method a route does not allow, oversized bodies), answers
``{"error": {"code": NAME, "message": ...}}`` with ``errors.HTTP_STATUS[code]``, and keeps the headers
HTTP requires of it (``Allow`` on 405, ``WWW-Authenticate`` on 401).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import ApiKeys
from gateway.auth import Scope as KeyScope
from gateway.calls import Calls
from gateway.errors import HTTP_STATUS, GatewayError, status_of
from gateway.gate import Failure
from gateway.http.models import HealthOut, describe_validation
from gateway.http.routes import Served, reads, writes
from vitrine.contracts import MAX_IMAGE_BYTES
from vitrine.errors import bounded

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MAX_BODY_BYTES = MAX_IMAGE_BYTES * 4 // 3 + (1 << 20)
"""The largest accepted image, base64-encoded, plus room for the rest of a request."""
_PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'"
_BEARER = HTTPBearer(auto_error=False, description="the gateway's API key, when it requires one")
_CODE_OF_HTTP = {405: grpc.StatusCode.UNIMPLEMENTED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED} | {
    status: code for code, status in reversed(HTTP_STATUS.items())
}
_KEPT_HEADERS = ("allow",)
"""Headers of a framework refusal that HTTP requires the answer to carry (RFC 9110: 405 lists Allow)."""


def error_response(
    code: grpc.StatusCode, message: str, status: int | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    out = dict(headers or {})
    if code == grpc.StatusCode.UNAUTHENTICATED:
        out["www-authenticate"] = "Bearer"
    return JSONResponse(
        {"error": {"code": code.name, "message": bounded(message)}},
        status_code=status or HTTP_STATUS.get(code, 500),
        headers=out or None,
    )


class BodyLimit:
    """413 for a body above ``limit`` bytes: refused from its Content-Length before it is read, or as
    soon as a chunked body passes the limit."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(413, f"request body is larger than {self.limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            exc = self._too_large()
            await error_response(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc.detail), 413)(
                scope, receive, send
            )
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)


def key_check(keys: ApiKeys, scope: KeyScope) -> list[Any]:
    """The key check of ``gateway.auth`` for every route of a router (declared in the schema as a
    bearer security scheme); none when no key is configured."""
    if not keys.enabled:
        return []

    async def require_key(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
    ) -> None:
        given = credentials.credentials if credentials is not None else ""
        refusal = keys.check_scope(given, scope, f"{request.method} {request.url.path}")
        if refusal is not None:
            raise Failure(refusal.code, str(refusal))

    return [Depends(require_key)]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Failure)
    async def on_failure(request: Request, exc: Failure) -> JSONResponse:
        return error_response(exc.code, exc.message)

    @app.exception_handler(GatewayError)
    async def on_refused(request: Request, exc: GatewayError) -> JSONResponse:
        """A route that could not decode its input (base64, a filters parameter) before calling."""
        return error_response(*status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(grpc.StatusCode.INVALID_ARGUMENT, describe_validation(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_OF_HTTP.get(exc.status_code, grpc.StatusCode.UNKNOWN)
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        headers = {k: v for k, v in (exc.headers or {}).items() if k.lower() in _KEPT_HEADERS}
        return error_response(code, message, exc.status_code, headers)


def _drop_framework_422(app: FastAPI) -> None:
    """Validation failures answer 400 with the error shape; the schema should not promise FastAPI's 422."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    calls: Calls, timeout: float, keys: ApiKeys, health: Callable[[], Mapping[str, bool]]
) -> FastAPI:
    app = FastAPI(
        title="Vitrine gateway",
        version="1",
        description=(
            "Text, image and hybrid product search with filters and re-ranking, similar items, the "
            "catalog, shopper events and recommendations, over HTTP/JSON. Same operations, rules and "
            "messages as the gRPC API (vitrine.gateway.v1.ProductSearch); a failure answers "
            '`{"error": {"code": "<gRPC code name>", "message": "..."}}`.'
        ),
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the page must work offline
        redoc_url=None,
    )
    app.state.served = Served(calls, timeout)
    app.include_router(reads, dependencies=key_check(keys, KeyScope.READ))
    app.include_router(writes, dependencies=key_check(keys, KeyScope.WRITE))

    @app.get("/healthz", response_model=HealthOut, summary="SERVING when Triton and the index both serve")
    async def healthz() -> JSONResponse:
        deps = dict(health())
        serving = bool(deps) and all(deps.values())
        body = HealthOut(status="SERVING" if serving else "NOT_SERVING", dependencies=deps)
        return JSONResponse(body.model_dump(), status_code=200 if serving else 503)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            media_type="text/html",
            headers={"content-security-policy": _PAGE_CSP, "cache-control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    _drop_framework_422(app)
    return app
