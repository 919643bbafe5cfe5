"""Turning pydantic's validation errors into one clear OpenAI-style message."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from powertrain.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def invalid_request_from(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in first["loc"] if p != "body")
    if first["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {loc}", param=loc or None)
    if first["type"] == "missing":
        return InvalidRequest(f"missing required parameter: {loc}", param=loc or None)
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
    where = f"{loc}: " if loc else ""
    return InvalidRequest(f"{where}{message}{more}", param=loc or None)


def parse_as(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_request_from(exc) from None
