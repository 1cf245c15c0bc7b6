"""openai_api/access.py: Bearer keys from DALLE_NODES_API_KEY (comma-separated), compared in constant time; 401 with
OpenAI's codes missing_api_key / invalid_api_key."""

from __future__ import annotations

import hashlib

import pytest

from dalle_nodes.openai_api import access
from dalle_nodes.openai_api.access import KEY_VARIABLE, allows, check, keys_from, set_but_empty
from dalle_nodes.openai_api.errors import ApiError

KEYS = keys_from({KEY_VARIABLE: "sk-first, sk-second ,,sk-third"})


def refused(authorization: str | None, keys: tuple[bytes, ...] = KEYS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        check(authorization, keys)
    return caught.value


def test_keys_are_split_on_commas_and_stripped() -> None:
    assert KEYS == tuple(hashlib.sha256(key).digest() for key in (b"sk-first", b"sk-second", b"sk-third"))


def test_keys_are_kept_hashed_not_in_clear() -> None:
    assert all(b"sk-" not in key and len(key) == 32 for key in KEYS)


@pytest.mark.parametrize("environment", [{}, {KEY_VARIABLE: ""}, {KEY_VARIABLE: "  "}, {"OTHER": "sk-x"}])
def test_no_keys_leave_the_routes_open(environment: dict) -> None:
    assert keys_from(environment) == () and not set_but_empty(environment)
    check(None, ())
    check("Bearer anything", ())
    check("garbage", ())


def test_a_key_variable_of_commas_alone_fails_closed() -> None:
    """Set, but to no key: a mistake, read the safe way (every request refused, the log says why)."""
    environment = {KEY_VARIABLE: " , ,"}
    keys = keys_from(environment)
    assert set_but_empty(environment) and len(keys) == 1
    for authorization in (None, "Bearer ", "Bearer ,", "Bearer  , ,"):
        with pytest.raises(ApiError) as refused:
            check(authorization, keys)
        assert refused.value.status == 401


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer sk-first",
        "Bearer sk-second",
        "Bearer sk-third",
        "bearer sk-second",
        "BEARER sk-third",
        "  Bearer   sk-first  ",
    ],
)
def test_any_listed_key_passes(authorization: str) -> None:
    check(authorization, KEYS)


@pytest.mark.parametrize(
    "authorization", [None, "", "   ", "Bearer", "Bearer   ", "sk-first", "Basic sk-first", "Token sk-first"]
)
def test_missing_key_is_401_missing_api_key(authorization: str | None) -> None:
    error = refused(authorization)
    assert (error.status, error.code, error.param) == (401, "missing_api_key", None)
    assert "Authorization: Bearer" in error.message and KEY_VARIABLE in error.message
    assert error.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer sk-fourth", "Bearer sk-first,sk-second", "Bearer sk-firs", "Bearer sk-first2", "Bearer SK-FIRST"],
)
def test_wrong_key_is_401_invalid_api_key(authorization: str) -> None:
    error = refused(authorization)
    assert (error.status, error.code, error.param) == (401, "invalid_api_key", None)
    assert error.message.startswith("Incorrect API key provided")
    assert authorization.split()[-1] not in error.message  # the guess is not echoed back


def test_a_key_is_not_accepted_by_a_server_with_other_keys() -> None:
    error = refused("Bearer sk-first", keys_from({KEY_VARIABLE: "sk-other"}))
    assert error.code == "invalid_api_key"


def test_every_key_is_compared_whichever_matches(monkeypatch) -> None:
    """The answer takes as long for the first key as for the last or none: each check compares against all keys, each
    through hmac.compare_digest."""
    calls = []

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(access.hmac, "compare_digest", counting)
    for authorization in ("Bearer sk-first", "Bearer sk-third", "Bearer sk-nothing"):
        calls.clear()
        try:
            check(authorization, KEYS)
        except ApiError:
            pass
        assert len(calls) == len(KEYS)
        assert {b for _, b in calls} == set(KEYS)
        assert all(len(a) == len(b) == 32 for a, b in calls)  # fixed-length digests, whatever the key's length


def test_allows_is_what_check_lets_through() -> None:
    keys = keys_from({KEY_VARIABLE: "sk-a"})
    assert allows("Bearer sk-a", keys) and not allows("Bearer sk-b", keys) and not allows(None, keys)
    assert allows(None, ())  # open routes
