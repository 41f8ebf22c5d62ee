"""OpenAI-style errors: every failure leaves the server as
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for bad
input and 5xx only for our own faults.

Status codes (the same as OpenAI's API where it has one):

* 400 ``invalid_request_error`` — malformed JSON, missing fields, wrong
  types, out-of-range values, limits such as ``max_tokens`` exceeded (the
  body names the offending ``param``, e.g. ``messages[0].role``). FastAPI's
  default would be 422; we answer 400 because OpenAI clients and tools expect it.
* 401 ``invalid_api_key`` — a key is required and missing or wrong.
* 404 — unknown route or unknown ``model``.
* 405 — wrong HTTP method.
* 413 ``request_too_large`` — the body is over ``limits.max_body_bytes``.
* 429 ``token_budget_exhausted`` — the replica's concurrent token budget
  (``limits.max_concurrent_tokens``) is in use; retry later (``Retry-After``).
* 500 ``internal_error`` — anything unexpected (a bug, a failed model step),
  still as a JSON body.
* 503 — the replica has no model loaded yet.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


class APIError(Exception):
    """An error the client should see, with its HTTP status and OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # noqa: A002 - the OpenAI field name
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else (
            {"Retry-After": "1"} if self.status == 429 else None)
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def param_path(loc: tuple | list) -> str | None:
    """``("body", "messages", 0, "role")`` -> ``"messages[0].role"``."""
    out = ""
    for p in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p in _TYPE_TAGS or any(ch in str(p) for ch in "[]-(),"):
            continue  # a pydantic union-branch tag ("str", "list[int]"), not a field
        else:
            out += f".{p}" if out else str(p)
    return out or None


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none", "bytes", "tuple"})


def validation_error(exc: RequestValidationError) -> APIError:
    """Turn FastAPI/pydantic validation errors into one 400 that names the field."""
    errors = list(exc.errors())
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return bad_request(
            f"We could not parse the JSON body of your request ({detail}). "
            "The body must be a JSON object.",
            code="invalid_json",
        )
    if kind == "missing" and tuple(first.get("loc", ())) == ("body",):
        return bad_request("The request body is empty; send a JSON object.", code="invalid_json")
    if tuple(first.get("loc", ())) == ("body",) and kind in ("model_attributes_type", "dict_type", "model_type"):
        return bad_request(
            "The request body must be a JSON object (send it with Content-Type: application/json).",
            code="invalid_json",
        )
    errors = _drop_other_union_branches(errors)
    first = errors[0]
    kind = first.get("type", "")
    msgs = []
    seen = set()
    for err in errors:
        param = param_path(err.get("loc", ()))
        text = err.get("msg", "invalid value")
        if err.get("type") == "missing":
            text = "field required"
        key = (param, text)
        if key in seen:
            continue
        seen.add(key)
        msgs.append(f"'{param}': {text}" if param else text)
        if len(msgs) == 3:
            break
    more = len(errors) - len(msgs)
    suffix = f" (and {more} more)" if more > 0 else ""
    return bad_request("Invalid request: " + "; ".join(msgs) + suffix, param=param_path(first.get("loc", ())),
                       code="missing_required_parameter" if kind == "missing" else "invalid_value")


_TYPE_MISMATCH = frozenset({
    "string_type", "int_type", "float_type", "bool_type", "list_type", "dict_type",
    "model_type", "model_attributes_type", "none_required",
})


def _drop_other_union_branches(errors: list[dict]) -> list[dict]:
    """For a union field (``str | list[...]``) pydantic reports every branch;
    keep the branch the client evidently meant: drop a plain type mismatch
    when another error on the same field (or inside it) says more."""
    params = [(param_path(e.get("loc", ())) or "", e) for e in errors]
    kept = [
        e for p, e in params
        if e.get("type") not in _TYPE_MISMATCH
        or not any(q.startswith(p) and o.get("type") not in _TYPE_MISMATCH for q, o in params if o is not e)
    ]
    return kept or errors


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through :class:`APIError` so the body is OpenAI-shaped."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            msg = f"Unknown route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            msg = f"Method {request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        code = {413: "request_too_large"}.get(exc.status_code)
        if exc.status_code == 400 and "parsing the body" in msg:  # FastAPI: undecodable or too deep JSON
            msg, code = "We could not parse the JSON body of your request.", "invalid_json"
        return APIError(exc.status_code, msg, code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # a bug or a failed model step: still an OpenAI-shaped body, never Starlette's plain text
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return APIError(500, f"The server had an error while processing your request ({type(exc).__name__}: {exc}).",
                        type="server_error", code="internal_error").response()

    @app.exception_handler(json.JSONDecodeError)
    async def _json(_: Request, exc: json.JSONDecodeError):
        msg = f"We could not parse the JSON body of your request ({exc.msg})."
        return bad_request(msg, code="invalid_json").response()
