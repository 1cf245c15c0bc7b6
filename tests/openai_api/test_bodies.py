"""openai_api/bodies.py: request bodies read within limits, through aiohttp's own reader on a real local server.

A multipart form that aiohttp's reader cannot take (no boundary, one over 70 characters, a body that never opens or
never closes with it, part headers too long, too many or not headers at all) is a 400 in OpenAI's shape saying how
a form is made, never an exception out of the handler (a 500 with a traceback in ComfyUI's log).
"""

from __future__ import annotations

import asyncio

import pytest

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (ComfyUI's server) reads the bodies")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from dalle_nodes.openai_api.bodies import FORM_SHAPE, MAX_BOUNDARY, read_form  # noqa: E402
from dalle_nodes.openai_api.errors import ApiError  # noqa: E402

BOUNDARY = "b0und4ry"
FORM = f"multipart/form-data; boundary={BOUNDARY}"


async def echo_form(request: web.Request) -> web.Response:
    """What read_form gives, or its ApiError in OpenAI's shape, as routes.py answers it; anything else escapes."""
    try:
        fields, files = await read_form(request, "edits")
    except ApiError as error:
        return web.json_response(error.body(), status=error.status)
    return web.json_response(
        {"fields": fields, "files": {name: data.decode("latin-1") for name, data in files.items()}}
    )


def post(body: bytes, content_type: str = FORM) -> tuple[int, dict]:
    """(status, JSON answer) of one POST of `body` to a fresh server running echo_form."""

    async def exchange() -> tuple[int, dict]:
        app = web.Application()
        app.router.add_post("/edits", echo_form)
        async with TestClient(TestServer(app)) as client:
            answer = await client.post("/edits", data=body, headers={"Content-Type": content_type})
            return answer.status, await answer.json(content_type=None)

    return asyncio.run(exchange())


def part(name: str, content: bytes, filename: str | None = None, boundary: str = BOUNDARY, headers: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n".encode() + content + b"\r\n"


def closing(boundary: str = BOUNDARY) -> bytes:
    return f"--{boundary}--\r\n".encode()


def refusal(body: bytes, content_type: str = FORM) -> str:
    """The message of a 400 in OpenAI's shape that names no one field."""
    status, answer = post(body, content_type)
    assert status == 400, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"message", "type", "param", "code"}
    assert (answer["error"]["type"], answer["error"]["param"]) == ("invalid_request_error", None)
    return answer["error"]["message"]


def test_a_well_formed_form_is_read() -> None:
    body = part("prompt", b"a red fox") + part("image", b"\x89PNG...", "in.png") + closing()
    assert post(body) == (200, {"fields": {"prompt": "a red fox"}, "files": {"image": "\x89PNG..."}})


def test_a_boundary_of_70_characters_is_taken() -> None:
    boundary = "b" * MAX_BOUNDARY
    body = part("prompt", b"a fox", boundary=boundary) + closing(boundary)
    assert post(body, f"multipart/form-data; boundary={boundary}") == (
        200,
        {"fields": {"prompt": "a fox"}, "files": {}},
    )


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("multipart/form-data", "The Content-Type multipart/form-data names no boundary."),
        (f"multipart/form-data; boundary={'b' * (MAX_BOUNDARY + 1)}", "The form's boundary is 71 characters long."),
        ('multipart/form-data; boundary=""', "The form's boundary is 0 characters long."),
    ],
)
def test_a_content_type_without_a_usable_boundary(content_type: str, words: str) -> None:
    body = part("prompt", b"a fox", boundary="b" * (MAX_BOUNDARY + 1)) + closing("b" * (MAX_BOUNDARY + 1))
    assert refusal(body, content_type) == f"{words} {FORM_SHAPE}"


CANNOT_READ = "The multipart form cannot be read: "
MALFORMED = {
    "another boundary": (
        part("prompt", b"a fox", boundary="other") + closing("other"),
        "no line of the body is the boundary its Content-Type names",
    ),
    "empty body": (b"", "no line of the body is the boundary its Content-Type names"),
    "no closing boundary": (part("prompt", b"a fox"), "the body ends inside a part, before the closing boundary"),
    "cut inside a part": (part("prompt", b"a fox")[:-2], "the body ends inside a part, before the closing boundary"),
    "cut inside the headers": (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="prompt"\r\n'.encode(),
        "the body ends inside a part, before the closing boundary",
    ),
    "junk after the closing boundary": (
        part("prompt", b"a fox") + closing()[:-2] + b"junk",
        "a part is not followed by the boundary",
    ),
    "a header line of 64 KB": (
        part("prompt", b"a fox", headers=f"X-Padding: {'x' * 65536}\r\n") + closing(),
        "a part's header line is too long",
    ),
    "1000 header lines": (
        part("prompt", b"a fox", headers="X-Padding: x\r\n" * 1000) + closing(),
        "a part's headers are not 'Name: value' lines, or too many of them",
    ),
    "a header that is no header": (
        part("prompt", b"a fox", headers="no colon here\r\n") + closing(),
        "a part's headers are not 'Name: value' lines, or too many of them",
    ),
    "a _charset_ part that names no charset": (
        part("_charset_", b"x" * 40) + part("prompt", b"a fox") + closing(),
        "its _charset_ part names no charset",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_form_is_a_400_saying_how_forms_are_made(case: str) -> None:
    body, words = MALFORMED[case]
    message = refusal(body)
    assert message.startswith(CANNOT_READ) and words in message and message.endswith(FORM_SHAPE)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # aiohttp warns of the broken Content-Disposition, then reads on
@pytest.mark.parametrize(
    "headers",
    ["Content-Disposition: form-data\r\n", "Content-Type: text/plain\r\n", 'Content-Disposition: name="x\r\n'],
)
def test_a_part_without_a_name(headers: str) -> None:
    body = f"--{BOUNDARY}\r\n{headers}\r\na fox\r\n".encode() + closing()
    assert refusal(body) == 'A form part has no name: give each one Content-Disposition: form-data; name="…".'
