"""Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status its clients
map to exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413, 429 RateLimitError,
500 InternalServerError)."""

from __future__ import annotations

TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "requests",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """A request the API answers with an error: `message` says what is wrong and how to fix it; `param` names the
    request field at fault (None when no one field is)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict:
        kind = TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)
