"""Errors in the OpenAI API's shape: `{"error": {"message", "type", "param", "code"}}` with the HTTP status its clients
map to exception classes (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413, 429 RateLimitError,
500 and 503 InternalServerError)."""

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


RETRY_AFTER_S = 2


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

    def headers(self) -> dict[str, str]:
        """OpenAI's clients retry 429 and 5xx answers twice by default: a 429 or 503 (full, or shutting down) after a
        short pause, but not our 500s (the same workflow would fail the same way, costing the GPU twice more)."""
        if self.status in (429, 503):
            return {"Retry-After": str(RETRY_AFTER_S)}
        return {"x-should-retry": "false"} if self.status >= 500 else {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)
