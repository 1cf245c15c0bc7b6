"""HTTP to a ComfyUI server, with the limits urllib lacks: a wall-clock deadline for each request (urllib's timeout
bounds each socket read, so a server that trickles a byte at a time could hold it for ever), no redirects (ComfyUI
sends none, and one could lead to any host), answers of bounded size, read in chunks, and --server checked first."""

from __future__ import annotations

import contextlib
import http.client
import re
import reprlib
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

READ_CHUNK_BYTES = 2**20
# Errors that mean the server was reached and then broke off, rather than that nothing answers at the address.
BROKEN_OFF = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, EOFError)


class ServerError(RuntimeError):
    """Nothing answers at the server's address (or the address is no URL); UnexpectedAnswer: the server went wrong."""


class UnexpectedAnswer(ServerError):
    """The server answered what a ComfyUI server would not (an HTTP error, not JSON, the wrong shape, a redirect),
    broke off the connection, or did not answer in time."""


class AnswerTooLarge(UnexpectedAnswer):
    """An answer longer than the caller's limit."""


def one_line(value: object, limit: int = 300) -> str:
    """Text from the server as it may be shown: one line without control characters (a terminal would obey escape
    codes), at most `limit` characters; other values as a short repr."""
    text = value if isinstance(value, str) else reprlib.repr(value)  # reprlib: bounded, even for deep nesting
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def without_credentials(server: str) -> str:
    """--server as it may be shown: a user:password@ before the host replaced by …@ (it is refused, never echoed)."""
    return re.sub(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?.*@", r"\1…@", server)


def server_url(server: str) -> str:
    """--server as the base of every request: http(s)://host[:port][/path], without a query, a fragment or
    credentials, its path %-escaped; else a ServerError that says what is wrong."""
    problem = _url_problem(server)
    if problem:
        shown = one_line(without_credentials(server), 100)
        raise ServerError(f"--server '{shown}' is not a URL like http://127.0.0.1:8188 ({problem}).")
    parts = urllib.parse.urlsplit(server.rstrip("/"))
    return parts._replace(path=urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=~")).geturl()


def _url_problem(server: str) -> str | None:
    if not server.isprintable() or " " in server:
        return "it holds spaces or control characters"
    if "@" in server:  # first: the parser's own messages could quote a password with a / in it
        return "give the host and port only, without user@: ComfyUI takes no credentials in the URL"
    try:
        parts = urllib.parse.urlsplit(server)
        port = parts.port  # ValueError where it is not a number from 0 to 65535
        if parts.hostname:
            parts.hostname.encode("idna")  # UnicodeError (a ValueError) where it cannot be a host name
    except ValueError as error:
        return str(error)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "write http:// or https://, then the host"
    if port == 0 or parts.query or parts.fragment or parts.username is not None:
        return "give the host and port only, without ?query, #fragment or user@, and a port from 1 to 65535"
    return None


class Deadline:
    """Shuts the sockets of one request down `seconds` from its start, so that a read blocked on a trickling server
    ends (in an error, or an answer cut short); `expired` tells which."""

    def __init__(self, seconds: float):
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut_down(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut_down(sock)


def _shut_down(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's: an SSL socket's drops its reader's state


class _Watched(http.client.HTTPConnection):
    deadline: Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.watch(self.sock)


class _WatchedHTTP(_Watched):
    pass


class _WatchedHTTPS(_Watched, http.client.HTTPSConnection):
    pass


def _watched(kind: type[_Watched], deadline: Deadline) -> Callable[..., _Watched]:
    def connection(*args: object, **kwargs: object) -> _Watched:
        made = kind(*args, **kwargs)
        made.deadline = deadline
        return made

    return connection


class _DeadlineHandler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """Opens each connection under the Deadline its request carries (request.deadline)."""

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(_WatchedHTTP, req.deadline), req)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(_WatchedHTTPS, req.deadline), req)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the 30x reaches the caller as an answer


def make_opener(local: bool) -> urllib.request.OpenerDirector:
    """An opener without redirects, under per-request deadlines; without proxies for this machine's own server (a
    proxy set for the internet must not catch it)."""
    proxies = [urllib.request.ProxyHandler({})] if local else []
    return urllib.request.build_opener(*proxies, _NoRedirects(), _DeadlineHandler())


def send(
    opener: urllib.request.OpenerDirector, req: urllib.request.Request, limit: int, seconds: float
) -> tuple[int, bytes]:
    """The status and body of `req` (HTTP errors included), within `seconds` in all: TimeoutError after that;
    ServerError where nothing answers at the address; UnexpectedAnswer where the server breaks off, redirects, or
    sends more than `limit` bytes."""
    what, server = f"{req.get_method()} {req.selector.partition('?')[0]}", f"{req.type}://{req.host}"
    with Deadline(seconds) as deadline:
        req.deadline = deadline
        try:
            answer = _exchange(opener, req, (what, server), limit, seconds)
        except urllib.error.URLError as error:  # while connecting or sending the request
            raise _send_failed(error.reason, deadline, what, server) from None
        except (OSError, http.client.HTTPException) as error:  # the connection broke, or the answer is not HTTP
            if deadline.expired or isinstance(error, TimeoutError):
                raise TimeoutError(f"{what} had no answer") from None
            reason = one_line(str(error) or type(error).__name__, 100)
            raise UnexpectedAnswer(f"{what}: {server} broke off, or answered not in HTTP ({reason}).") from None
        except ValueError as error:  # a URL http.client cannot send
            raise ServerError(f"{what}: cannot ask {server} ({one_line(str(error), 100)}).") from None
        if deadline.expired:  # the answer may have been cut short
            raise TimeoutError(f"{what} had no answer")
    return answer


def _send_failed(reason: object, deadline: Deadline, what: str, server: str) -> Exception:
    """No connection (nothing listens there, the name does not resolve, connecting timed out): ServerError; the
    server reached, then broken off or too slow to take the request: UnexpectedAnswer or TimeoutError."""
    if isinstance(reason, BROKEN_OFF):
        return UnexpectedAnswer(f"{what}: {server} broke off ({one_line(str(reason) or type(reason).__name__, 100)}).")
    if deadline.expired and not isinstance(reason, TimeoutError):
        return TimeoutError(f"{what} had no answer")
    return ServerError(f"ComfyUI at {server} cannot be reached ({reason}). Is it running?")


def _exchange(
    opener: urllib.request.OpenerDirector,
    req: urllib.request.Request,
    names: tuple[str, str],
    limit: int,
    seconds: float,
) -> tuple[int, bytes]:
    what, server = names
    try:
        response = opener.open(req, timeout=seconds)
    except urllib.error.HTTPError as error:
        response = error  # an HTTP error is an answer too: its body says why
    with response:
        if 300 <= response.status < 400:
            to = one_line(response.headers.get("Location") or "nowhere", 100)
            raise UnexpectedAnswer(
                f"{what} answered HTTP {response.status}, a redirect to {to}: ComfyUI sends none. Give ComfyUI's own "
                "address as --server."
            )
        return response.status, _read(response, f"{what}: {server}", limit)


def _read(response: http.client.HTTPResponse, where: str, limit: int) -> bytes:
    """The body in chunks: one read of `limit` bytes would ask for that much memory at once."""
    chunks, size = [], 0
    while chunk := response.read(min(READ_CHUNK_BYTES, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"{where} answered over {_size(limit)}: is it ComfyUI?")
    return b"".join(chunks)


def _size(count: int) -> str:
    return f"{count // 2**20} MiB" if count >= 2**20 else f"{count} bytes"
