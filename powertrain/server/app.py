"""Assembling the server in plain view: hot OpenAI routes in front, FastAPI behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from powertrain import __version__, ui
from powertrain.config import Config, load_config
from powertrain.errors import (
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PowertrainError,
    RequestTooLarge,
)
from powertrain.gateway import Gateway
from powertrain.schemas import ChatCompletionRequest
from powertrain.schemas.embeddings import EmbeddingRequest
from powertrain.server import (
    api,
    collections_api,
    datasets_api,
    docs_assets,
    feedback_api,
    finetune_api,
    keys_api,
    tasks_api,
)
from powertrain.server.asgi import Message, Receive, Scope, Send, send_error
from powertrain.server.auth import Access, Authenticator, route_access
from powertrain.server.openai_routes import TRACE_HEADER, OpenAIRoutes


def _error_response(exc: PowertrainError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.trace_id:
        headers[TRACE_HEADER.decode()] = exc.trace_id  # a traced failure names its trace
    return JSONResponse(exc.to_openai(), status_code=exc.status_code, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PowertrainError)
    async def powertrain_error(_r: Request, exc: PowertrainError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return _error_response(InvalidRequest(f"{loc}: {first.get('msg')}", param=loc or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return _error_response(NotFound("no such route; see /docs for the API"))
        error = PowertrainError(str(exc.detail))
        error.status_code = exc.status_code
        error.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error_response(error)

    @app.exception_handler(Exception)
    async def unexpected(_r: Request, exc: Exception) -> JSONResponse:
        return _error_response(PowertrainError("internal error; the server log has the details"))


def _openapi_with_hot_routes(app: FastAPI) -> Any:
    """FastAPI documents its own routes; the hot routes are added from the same models."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title="powertrain",
        version=__version__,
        routes=app.routes,
        description="OpenAI-compatible gateway and powertrain's own API.",
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, model, summary in (
        (
            "/v1/chat/completions",
            ChatCompletionRequest,
            "Chat completion (streaming with stream=true)",
        ),
        ("/v1/embeddings", EmbeddingRequest, "Embeddings from a model that embeds"),
    ):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
        schema["paths"][path] = {
            "post": {
                "summary": summary,
                "tags": ["openai"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{model.__name__}"}
                        }
                    },
                },
                "responses": {
                    "200": {"description": "OpenAI-shaped response (SSE when streaming)"},
                    "4XX": {"description": "OpenAI error shape"},
                },
            }
        }
    app.openapi_schema = schema
    return schema


class PowertrainApp:
    """The ASGI entry point: hot routes answer directly, everything else goes to FastAPI."""

    def __init__(self, gateway: Gateway, api_app: FastAPI, hot: OpenAIRoutes):
        self.gateway = gateway
        self.api = api_app
        self.hot_routes = hot.routes
        self._hot_paths = {path for _method, path in hot.routes}
        self.max_body = gateway.config.settings.max_body_bytes

    def route_table(self) -> list[tuple[str, str, Access | None]]:
        """(method, path, declared access) of every route, hot and framework alike."""
        table: list[tuple[str, str, Access | None]] = [
            (m, p, access) for (m, p), (_h, access) in self.hot_routes.items()
        ]

        def walk(routes: list[Any]) -> None:
            for route in routes:
                included = getattr(route, "original_router", None)  # FastAPI include_router
                if included is not None:
                    walk(included.routes)
                elif isinstance(route, APIRoute):
                    table.extend((m, route.path, route_access(route)) for m in route.methods or ())

        walk(self.api.routes)
        return table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = self.hot_routes.get((scope["method"], scope["path"]))
            if route is not None:
                await route[0](scope, receive, send)
                return
            if scope["path"] in self._hot_paths:
                await send_error(
                    send,
                    MethodNotAllowed(
                        f"{scope['method']} is not allowed on {scope['path']}; use POST"
                    ),
                )
                return
            receive = self._limited(receive)
        await self.api(scope, receive, send)  # type: ignore[arg-type]

    def _limited(self, receive: Receive) -> Receive:
        """Bound bodies on framework routes too (the hot routes bound their own)."""
        seen = 0
        limit = self.max_body

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise RequestTooLarge(
                    f"request body is over the limit of {limit} bytes (setting max_body_bytes)"
                )
            return message

        return limited


def create_app(config: Config | None = None, *, gateway: Gateway | None = None) -> PowertrainApp:
    config = config or (gateway.config if gateway else load_config())
    if not config.settings.admin_key and not config.settings.allow_unauthenticated:
        raise ConfigError(
            "allow_unauthenticated is false but no admin_key is set; set POWERTRAIN_ADMIN_KEY"
        )
    gateway = gateway or Gateway(config)
    authenticator = Authenticator(config.settings.admin_key, gateway.keys)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.aclose()  # flushes every pending trace

    api_app = FastAPI(
        title="powertrain",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    api_app.state.gateway = gateway
    api_app.state.authenticator = authenticator
    api_app.state.openapi_schema = lambda: _openapi_with_hot_routes(api_app)
    _install_error_handlers(api_app)
    api_app.include_router(api.router)
    api_app.include_router(tasks_api.router)
    api_app.include_router(tasks_api.v1_router)
    api_app.include_router(collections_api.router)
    api_app.include_router(keys_api.router)
    api_app.include_router(feedback_api.router)
    api_app.include_router(datasets_api.router)
    api_app.include_router(finetune_api.router)
    api_app.include_router(docs_assets.router)
    api_app.include_router(ui.router)  # the web UI: / and /ui/…
    hot = OpenAIRoutes(gateway, authenticator)
    return PowertrainApp(gateway, api_app, hot)
