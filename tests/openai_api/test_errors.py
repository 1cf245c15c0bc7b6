"""openai_api/errors.py: the error body every OpenAI client parses, `{"error": {message, type, param, code}}`."""

from __future__ import annotations

import pytest

from dalle_nodes.openai_api.errors import ApiError, bad_request


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "invalid_request_error"),
        (404, "invalid_request_error"),
        (413, "invalid_request_error"),
        (429, "requests"),
        (500, "server_error"),
        (503, "server_error"),
    ],
)
def test_body_is_openais_shape(status: int, kind: str) -> None:
    error = ApiError(status, "What is wrong, and how to fix it.", "size", "some_code")
    assert error.body() == {
        "error": {"message": "What is wrong, and how to fix it.", "type": kind, "param": "size", "code": "some_code"}
    }
    assert str(error) == "What is wrong, and how to fix it."


def test_body_keeps_null_param_and_code() -> None:
    body = ApiError(418, "odd").body()
    assert body == {"error": {"message": "odd", "type": "invalid_request_error", "param": None, "code": None}}


def test_bad_request_is_a_400() -> None:
    error = bad_request("n is 11", "n", "integer_above_max_value")
    assert (error.status, error.message, error.param, error.code) == (400, "n is 11", "n", "integer_above_max_value")


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (400, {}),
        (401, {}),
        (413, {}),
        (429, {"Retry-After": "2"}),  # the openai client retries 429 after this pause
        (500, {"x-should-retry": "false"}),  # … and would run a failing workflow twice more without this
        (503, {"Retry-After": "2"}),  # shutting down: retried, through a balancer on another worker
    ],
)
def test_headers_steer_the_clients_retries(status: int, headers: dict) -> None:
    assert ApiError(status, "m").headers() == headers
