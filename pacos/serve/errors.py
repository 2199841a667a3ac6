"""Errors in OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, with 4xx codes for anything
the client can fix (FastAPI's 422 becomes a 400, as OpenAI answers), and the handlers that make every
failure one of them."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pacos.errors import first_line


class APIError(Exception):
    """An error answered in OpenAI's format."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def generation_failed(error: str | None) -> APIError:
    return APIError(500, f"generation failed: {error or 'unknown error'}", "server_error")


def param_of(message: str) -> str | None:
    """'messages[0].role: must be ...' names its field first; OpenAI puts that in `param`."""
    match = re.match(r"([A-Za-z_][\w.\[\]]*): ", message)
    return match[1] if match else None


def validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
    loc = [part for part in first.get("loc", ()) if part != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}")
    if not loc:
        if kind == "missing":
            return APIError(400, "the request body is missing; send a JSON object")
        if kind in ("model_attributes_type", "dict_type"):
            return APIError(400, "the request body must be a JSON object")
        message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
        return APIError(400, message, param=param_of(message))
    param = str(loc[0])
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "finite_number":  # NaN or an infinity (protocol.py says so before this, for known fields)
        message = "must be a finite number"
    branches = [str(e["loc"][2]) for e in errors if len(e.get("loc", ())) > 2 and e["loc"][1] == param]
    if len(branches) > 1:  # no member of a union fitted: say what would have
        message = f"must be one of: {', '.join(dict.fromkeys(branches))}"
    if not message.startswith(f"{param}:"):
        message = f"{param}: {message}"
    return APIError(400, message, param=param)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure answered in OpenAI's format: never FastAPI's 422 body, never a bare 500 page."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        code = "not_found" if exc.status_code == 404 else None
        return APIError(exc.status_code, message, code=code, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        return APIError(
            500, f"internal error: {type(exc).__name__}: {first_line(exc)}", "server_error"
        ).response()
