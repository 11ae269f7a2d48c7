"""OpenAI's error body for every failure: `{"error": {"message", "type", "param", "code"}}`.

`APIError` is what the routes raise; the handlers installed by `install_handlers` turn it, FastAPI's
own validation errors (a 400 here, never a 422), unknown routes and any bug into that body, so a
client written for OpenAI reads every error the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from embedstack.errors import EmbedstackError

__all__ = ["APIError", "error_body", "error_response", "install_handlers", "invalid_request"]

logger = logging.getLogger("embedstack.server")

#: OpenAI's error `type` for each status this server answers with.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(EmbedstackError, RuntimeError):
    """A request the server refuses or cannot serve: status, message, the request field at fault, a code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {
        "error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param, "code": code}
    }


def error_response(error: APIError) -> JSONResponse:
    """The JSON response of an APIError."""
    return JSONResponse(
        error_body(error.status, error.message, error.param, error.code),
        status_code=error.status,
        headers=error.headers,
    )


def _loc_param(loc: tuple[Any, ...]) -> str | None:
    """'input[3]' for FastAPI's ('body', 'input', 3, ...)."""
    parts = [p for p in loc if p != "body"]
    if not parts:
        return None
    name = str(parts[0])
    for p in parts[1:]:
        if isinstance(p, int):
            name += f"[{p}]"
        elif p in ("str", "list[str]", "list[int]", "list[list[int]]", "int", "function-after[_check(), str]"):
            continue  # pydantic's union branch names
        else:
            break
    return name


def invalid_request(errors: Sequence[Any]) -> APIError:
    """The 400 for a request body that does not validate (pydantic's or FastAPI's error list)."""
    message, param = _validation_message(errors)
    return APIError(400, message, param=param, code="invalid_value")


def _validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})", None
    if loc in (("body",), ()) or (len(loc) == 1 and first.get("type") in ("missing", "model_attributes_type")):
        return "the request body must be a JSON object with 'input' and 'model'", None
    param = _loc_param(loc)
    if param and param.startswith("input"):
        return (
            f"'{param}' is invalid: 'input' must be a string or an array of strings ({first.get('msg', 'invalid')})",
            param,
        )
    return f"'{param or 'body'}' is invalid: {first.get('msg', 'invalid value')}", param


def install_handlers(app: FastAPI) -> None:
    """OpenAI error bodies for APIError, validation errors (400), HTTP errors and unexpected ones (500)."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(invalid_request(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail) if exc.detail else "error"
        code = "request_too_large" if exc.status_code == 413 else None
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see /docs"
        return JSONResponse(
            error_body(exc.status_code, message, None, code), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body(500, f"internal server error ({type(exc).__name__}); see the server log", None, None),
            status_code=500,
        )
