"""docs/deployment.md, each part
against real servers on 127.0.0.1.

- nginx (Debian's) runs ``deploy/nginx.conf`` itself, with only the upstream
  address and the listen line replaced, in front of a real aiohttp server.
- gunicorn runs ``deploy/app.py`` with ``aiohttp.GunicornWebWorker`` and two
  workers, with the commands the doc shows: no backplane, then ``RedisSync``
  against a real ``redis-server`` (``tests/backplanes.py``).
- CORS: the doc's aiohttp-cors code, over HTTP and from Chromium.
- Chromium (``browser`` tests) through nginx: 6 connections per origin over
  HTTP/1.1, no such limit over HTTP/2, and streamed uploads only over HTTP/2.
- Restarts and refusals: nginx's retry answer for an absent app (and the
  app's own refusals passed on), the adapter's ``refusal="retry"``,
  ``deploy/app.py``'s ``recovered`` event, and Chromium across a gunicorn
  restart (Redis history, the doc's ``keepEventSource``).

Under ``CI=true`` a missing nginx, gunicorn, aiohttp-cors or openssl fails the
test; elsewhere it skips with the reason. Every process started here is
stopped by its PID. Waits are bounds, never measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from aiohttp_crossws_sse import (
    ADAPTER_KEY,
    CloseDetails,
    Message,
    Peer,
    define_hooks,
    sse_adapter,
)
from aiohttp_crossws_sse.client import EventSourceClient, SSEClientError, connect
from aiohttp_crossws_sse.testing import EventReader, wait_until
from tests.backplanes import RedisServer, redis_server_fixture, running_redis  # noqa: F401
from tests.browser import conftest as browser_conftest
from tests.conftest import keepalives_written
from tests.test_docs import doc_block

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
WAIT = 10.0  # bound of every wait for something that should come at once

# Chromium (tests/browser/conftest.py's fixture), as the fixture ``chromium``.
chromium = browser_conftest.browser


def missing(what: str, how: str) -> None:
    """A tool is not installed: fail under CI, else skip."""
    message = f"{what} is not installed ({how})"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI needs it")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def answers(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def exited(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait (without blocking the loop) for ``proc`` to exit; its status or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while proc.poll() is None and loop.time() < deadline:  # noqa: ASYNC110 - a process, no event
        await asyncio.sleep(0.05)
    return proc.poll()


async def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """``sig`` to ``proc`` by its PID; SIGKILL if it is still there after 15 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        if await exited(proc, 15) is None:
            proc.kill()
    return proc.wait(15)


def tail(log: IO[bytes], size: int = 4000) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - size))
    return log.read().decode(errors="replace")


# -- the doc -----------------------------------------------------------------------------


# The doc's gunicorn commands (docs/deployment.md, `<!-- check: run NAME -->`).
def gunicorn_commands() -> list[str]:
    return [
        doc_block("deploy-gunicorn"),
        doc_block("deploy-gunicorn-conf"),
        doc_block("deploy-history"),
    ]


def doc_command(marker: str) -> tuple[dict[str, str], list[str]]:
    """The doc's shell command containing ``marker``: its ``VAR=value`` prefix
    and its arguments after ``gunicorn``."""
    for block in gunicorn_commands():
        for line in block.replace("\\\n", " ").splitlines():
            if marker in line:
                words = shlex.split(line.split("#", 1)[0])
                env = {}
                while "=" in words[0]:
                    name, value = words.pop(0).split("=", 1)
                    env[name] = value
                assert words[0] == "gunicorn", line
                return env, words[1:]
    raise AssertionError(f"the doc shows no command with {marker!r}")


def directives(block: str) -> list[str]:
    """An nginx block's directive lines: comments and blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def sse_location(text: str) -> str:
    return block(text, "location = /sse {")


def fallback_location(text: str) -> str:
    return block(text, "location @sse_unavailable {")


def block(text: str, opener: str) -> str:
    """The nginx block that ``opener`` opens, to its matching brace (braces
    in comments do not count)."""
    start = end = text.index(opener)
    depth = 0
    for line in text[start:].splitlines(keepends=True):
        code = line.split("#", 1)[0]
        depth += code.count("{") - code.count("}")
        end += len(line)
        if depth == 0:
            return text[start:end]
    raise AssertionError(f"{opener!r} is not closed")


# The line of deploy/nginx.conf that answers the stream's GET with a retry
# while the app is down (some tests take it out to show what it does).
FALLBACK = "error_page 502 504 = @sse_unavailable;"


# -- nginx -------------------------------------------------------------------------------


def nginx_binary() -> str:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        missing("nginx", "apt-get install nginx")
    assert binary is not None
    return binary


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=30).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out)
    assert found, out
    return tuple(int(part) for part in found.groups())


@dataclass
class TLS:
    port: int
    cert: str
    key: str


Changes = tuple[tuple[str, str], ...]


def render_site(
    app_port: int, port: int, tls: TLS | None, version: tuple[int, ...], changes: Changes = ()
) -> str:
    """deploy/nginx.conf with the app's port for its upstream and our listen
    line(s) for its ``listen 80;``; nothing else is touched, but for the
    ``changes`` (old, new) a test names to show what one line does."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    listen = f"listen 127.0.0.1:{port};"
    if tls is not None:  # the doc's HTTP/2 lines, for the nginx at hand
        if version >= (1, 25, 1):
            listen += f"\n    listen 127.0.0.1:{tls.port} ssl;\n    http2 on;"
        else:
            listen += f"\n    listen 127.0.0.1:{tls.port} ssl http2;"
        listen += f"\n    ssl_certificate {tls.cert};\n    ssl_certificate_key {tls.key};"
    for old, new in (
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};"),
        ("listen 80;", listen),
        *changes,
    ):
        assert text.count(old) == 1, f"deploy/nginx.conf must say {old!r} once: the test sets it"
        text = text.replace(old, new)
    return text


# What a distribution's http {} may well hold: compression of text, the stream
# included. The shipped location must keep the stream uncompressed anyway.
NGINX_MAIN = """\
{user}worker_processes 1;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    gzip on;
    gzip_types text/plain text/event-stream application/json;
    gzip_min_length 1;
    include {dir}/site.conf;
}}
"""


class Nginx:
    """Debian's nginx, not daemonised, in a temporary directory (config, pid,
    logs, temp files), on a free port of 127.0.0.1 (plus one for TLS)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.version = nginx_version(binary)
        self.dir = tempfile.mkdtemp(prefix="crossws-nginx-")
        self.log = open(os.path.join(self.dir, "nginx.log"), "w+b")  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.tls_url = ""

    def _certificate(self) -> tuple[str, str]:
        openssl = shutil.which("openssl")
        if openssl is None:
            missing("openssl", "apt-get install openssl")
        assert openssl is not None
        cert, key = os.path.join(self.dir, "cert.pem"), os.path.join(self.dir, "key.pem")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        return cert, key

    def _spawn(
        self, app_port: int, port: int, tls: TLS | None, changes: Changes
    ) -> subprocess.Popen[bytes]:
        # As root, nginx's workers would switch to "nobody", who cannot use our
        # temporary directory; a test on loopback keeps them root.
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = Path(self.dir, "nginx.conf")
        conf.write_text(NGINX_MAIN.format(user=user, dir=self.dir))
        site = render_site(app_port, port, tls, self.version, changes)
        Path(self.dir, "site.conf").write_text(site)
        return subprocess.Popen(
            [self.binary, "-c", str(conf), "-p", self.dir + "/",
             "-g", f"daemon off; pid {self.dir}/nginx.pid; error_log {self.dir}/error.log;"],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip

    async def start(self, app_port: int, *, tls: bool = False, changes: Changes = ()) -> None:
        certificate = self._certificate() if tls else None
        for _ in range(3):  # a free port may be taken before nginx binds it
            port = free_port()
            tls_at = TLS(free_port(), *certificate) if certificate else None
            self.proc = self._spawn(app_port, port, tls_at, changes)
            ports = [port] + ([tls_at.port] if tls_at else [])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while self.proc.poll() is None and loop.time() < deadline:
                if all([await answers(p) for p in ports]):
                    self.url = f"http://127.0.0.1:{port}"
                    self.tls_url = f"https://127.0.0.1:{tls_at.port}" if tls_at else ""
                    return
                await asyncio.sleep(0.02)
            await stop(self.proc)
            if "Address already in use" not in self.errors():
                break
        raise RuntimeError(f"nginx did not start: {self.errors()}")

    def errors(self) -> str:
        path = os.path.join(self.dir, "error.log")
        text = Path(path).read_text(errors="replace") if os.path.exists(path) else ""
        return text[-4000:] + tail(self.log)

    async def stop(self) -> None:
        if self.proc is not None:
            await stop(self.proc)  # SIGTERM: a fast shutdown, open streams cut
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Front:
    """An app behind nginx: ``url`` (HTTP/1.1), ``tls_url`` (HTTPS, HTTP/2)."""

    url: str
    tls_url: str
    app_url: str  # the app itself, not through nginx
    nginx: Nginx


@pytest.fixture
async def nginx_in_front(aiohttp_server: Any) -> AsyncIterator[Callable[..., Awaitable[Front]]]:
    """``await nginx_in_front(app, tls=False)``: serve ``app`` on 127.0.0.1
    (pytest-aiohttp's real server) and start nginx in front of it."""
    binary = nginx_binary()
    proxies: list[Nginx] = []

    async def start(app: web.Application, *, tls: bool = False) -> Front:
        server = await aiohttp_server(app)
        proxy = Nginx(binary)
        proxies.append(proxy)
        await proxy.start(server.port, tls=tls)
        return Front(proxy.url, proxy.tls_url, str(server.make_url("")).rstrip("/"), proxy)

    yield start
    for proxy in proxies:  # before the app's server, which the fixture stops after us
        await proxy.stop()


class Recorder:
    """Hooks of a bidirectional test app that note what they see."""

    def __init__(self) -> None:
        self.opened: list[Peer] = []
        self.messages: list[str] = []
        self.closed: list[tuple[str, CloseDetails]] = []

    def open(self, peer: Peer) -> None:
        self.opened.append(peer)
        peer.subscribe("news")

    def message(self, peer: Peer, message: Message) -> None:
        self.messages.append(message.text())

    def close(self, peer: Peer, details: CloseDetails) -> None:
        self.closed.append((peer.id, details))


async def strip_accel_buffering(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.popall("X-Accel-Buffering", None)


async def big_text(request: web.Request) -> web.Response:
    return web.Response(text="compress me " * 200)


async def next_through_nginx(reader: EventReader, wanted: str) -> str:
    try:
        event = await reader.next(WAIT)
    except TimeoutError as exc:
        raise AssertionError(
            f"{wanted} did not come through nginx within {WAIT}s: does it buffer the stream? {exc}"
        ) from None
    return event.data


@pytest.mark.parametrize(
    "accel_header", [True, False], ids=["app-sends-X-Accel-Buffering", "config-alone"]
)
async def test_nginx_stream(nginx_in_front: Any, accel_header: bool) -> None:
    hooks = Recorder()
    sse = sse_adapter(hooks, bidir=True, keepalive=0.2)
    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_get("/text", big_text)
    if not accel_header:  # only the config keeps nginx from buffering
        app.on_response_prepare.append(strip_accel_buffering)
    front = await nginx_in_front(app)

    async with aiohttp.ClientSession(auto_decompress=False) as session:
        # gzip is live in this nginx: another route of the app is compressed ...
        async with session.get(front.url + "/text", headers={"Accept-Encoding": "gzip"}) as other:
            assert other.status == 200
            assert other.headers.get("Content-Encoding") == "gzip"

        try:
            async with asyncio.timeout(WAIT):
                response = await session.get(
                    front.url + "/sse",
                    headers={"Accept": "text/event-stream", "Accept-Encoding": "gzip"},
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                )
        except TimeoutError:
            raise AssertionError(
                f"the stream's headers did not come through nginx within {WAIT}s: "
                "does it buffer the stream?"
            ) from None
        try:  # ... the stream is not
            assert response.status == 200
            assert response.headers["Server"].startswith("nginx")
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert "Content-Encoding" not in response.headers
            reader = EventReader(response)
            first = await reader.next(WAIT)
            await wait_until(lambda: hooks.opened, WAIT, "the open hook")
            peer = hooks.opened[0]
            assert (first.event, first.data) == ("crossws-id", peer.id)
            assert response.headers["x-crossws-id"] == peer.id

            # one by one: each event is published only once the previous one arrived
            for i in range(20):
                sse.publish("news", f"event {i}")
                assert await next_through_nginx(reader, f"event {i}") == f"event {i}"

            # keep-alive comments pass through
            assert (await reader.comment(WAIT)).strip() == "ping"

            # bidirectional mode: a plain POST ...
            async with session.post(
                front.url + "/sse", data=b"plain", headers={"x-crossws-id": peer.id}
            ) as posted:
                assert posted.status == 200, await posted.text()
            assert hooks.messages == ["plain"]

            # ... and a streamed one, whose first chunk reaches the hook while the
            # POST is still open (nginx does not wait for the end of the body)
            release = asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                yield b"one"
                await release.wait()
                yield b"two"

            async def streamed_post() -> int:
                async with session.post(
                    front.url + "/sse",
                    data=body(),
                    headers={"x-crossws-id": peer.id, "Content-Type": "application/octet-stream"},
                ) as answer:
                    return answer.status

            post = asyncio.create_task(streamed_post())
            try:
                await wait_until(
                    lambda: "one" in hooks.messages,
                    WAIT,
                    "the first chunk of an open POST at the message hook (is nginx "
                    "buffering the request body?)",
                )
                assert not post.done()
            finally:
                release.set()
                status = await asyncio.wait_for(post, WAIT)
            assert status == 200
            assert hooks.messages == ["plain", "one", "two"]
            assert hooks.closed == []
        finally:
            # the client leaves: nginx drops its connection to the app, the close hook runs
            response.close()
        await wait_until(lambda: hooks.closed, WAIT, "the close hook after the client left nginx")
    ((peer_id, details),) = hooks.closed
    assert peer_id == peer.id
    assert details.reason == "connection lost"
    assert not sse.peers

    async with aiohttp.ClientSession() as session, session.get(front.app_url + "/sse") as direct:
        # what nginx got from the app: with the header, or (config alone) without
        assert direct.headers.get("X-Accel-Buffering") == ("no" if accel_header else None)


@pytest.mark.parametrize(
    "accel_header", [True, False], ids=["app-sends-X-Accel-Buffering", "config-alone"]
)
async def test_nginx_passes_keepalives_of_an_idle_stream(
    nginx_in_front: Any, accel_header: bool
) -> None:
    """A stream with no event at all: its keep-alive comment lines (``: ping``
    alone, no blank line after them) come through nginx one by one. A
    buffering proxy would hold these few bytes back until its buffer filled."""
    app = web.Application()
    sse_adapter(keepalive=0.1).setup(app, "/sse")
    if not accel_header:
        app.on_response_prepare.append(strip_accel_buffering)
    front = await nginx_in_front(app)
    try:
        raw = await keepalives_written(front.url + "/sse", 3, WAIT)
    except TimeoutError:
        raise AssertionError(
            f"3 keep-alives did not come through nginx within {WAIT}s: does it buffer?"
        ) from None
    assert raw.startswith(b": ping\n: ping\n: ping\n"), raw
    assert b"\n\n" not in raw, raw


def test_nginx_conf_directives() -> None:
    """The stream's location holds the directives the doc explains, with a
    read timeout well above the default keep-alive interval; and the doc shows
    that very location."""
    location = directives(sse_location(NGINX_CONF.read_text(encoding="utf-8")))
    for line in (
        "proxy_http_version 1.1;",
        "proxy_buffering off;",
        "gzip off;",
        "proxy_request_buffering off;",
        "client_max_body_size 0;",
        FALLBACK,
    ):
        assert line in location, line
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
    (read_timeout,) = (line for line in location if line.startswith("proxy_read_timeout"))
    found = re.fullmatch(r"proxy_read_timeout (\d+)([smhd]?);", read_timeout)
    assert found, read_timeout
    keepalive = sse_adapter().options.keepalive
    assert int(found[1]) * units[found[2]] >= 3 * keepalive, read_timeout

    shown = doc_block("nginx-sse-location")
    assert directives(sse_location(shown)) == location, "the doc and deploy/nginx.conf differ"
    # and the location that answers for an absent app, as the file has it
    fallback = directives(fallback_location(NGINX_CONF.read_text(encoding="utf-8")))
    shown = doc_block("nginx-fallback")
    assert FALLBACK in directives(shown), "the doc shows the error_page line with it"
    assert directives(fallback_location(shown)) == fallback, "the doc and the file differ"


# -- nginx while the app is down -----------------------------------------------------------


def fallback_retry() -> int:
    """The ``retry:`` of deploy/nginx.conf's answer for an absent app."""
    found = re.search(r"retry: (\d+)", fallback_location(NGINX_CONF.read_text(encoding="utf-8")))
    assert found
    return int(found[1])


@contextlib.contextmanager
def silent_app() -> Iterator[int]:
    """A port whose listener never accepts: connections wait in its backlog
    and nothing ever answers (a hung app). Its port."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.mark.parametrize("down", ["nothing-listens", "no-answer-in-time"])
async def test_nginx_answers_the_stream_for_an_absent_app(down: str) -> None:
    """The app is not there: nginx's own 502 (connection refused) or 504 (no
    answer within proxy_read_timeout, cut to 1 s here). An EventSource's GET
    gets a 200 event stream that only says when to retry, so the browser
    retries instead of giving up for good; anything else gets nginx's 502.
    Without the error_page line the GET gets the 502 or 504 itself."""
    binary = nginx_binary()
    with contextlib.ExitStack() as stack:
        if down == "nothing-listens":
            port, changes, status = free_port(), (), 502
        else:
            port, status = stack.enter_context(silent_app()), 504
            changes = (("proxy_read_timeout 60s;", "proxy_read_timeout 1s;"),)
        proxy, bare = Nginx(binary), Nginx(binary)
        try:
            await proxy.start(port, changes=changes)
            await bare.start(port, changes=(*changes, (FALLBACK, "")))
            async with aiohttp.ClientSession(auto_decompress=False) as session:
                headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip"}
                async with session.get(proxy.url + "/sse", headers=headers) as answer:
                    assert answer.status == 200
                    assert answer.headers["Content-Type"] == "text/event-stream"
                    assert answer.headers["Cache-Control"] == "no-cache"
                    assert "Content-Encoding" not in answer.headers
                    reader = EventReader(answer)
                    assert await reader.rest(WAIT) == []  # no event: nothing to dispatch
                    assert reader.parser.retry == fallback_retry()
                    # no id: field, which would reset the browser's Last-Event-ID
                    assert not re.search(rb"^id", bytes(reader.raw), re.M), reader.raw
                # what is not an EventSource's GET sees the outage
                for method in ("POST", "HEAD", "OPTIONS"):
                    body = b"x" if method == "POST" else None
                    async with session.request(method, proxy.url + "/sse", data=body) as answer:
                        assert answer.status == 502, (method, answer.status)
                        assert answer.headers["Content-Type"] == "text/html", method
                if down == "nothing-listens":  # the rest of the app is not answered for
                    async with session.get(proxy.url + "/other") as answer:
                        assert answer.status == 502
                # the line is what does it
                async with session.get(bare.url + "/sse", headers=headers) as answer:
                    assert answer.status == status
            expected = "Connection refused" if down == "nothing-listens" else "timed out"
            assert expected in proxy.errors(), proxy.errors()
        finally:
            await proxy.stop()
            await bare.stop()


async def test_nginx_passes_on_the_apps_own_refusals(nginx_in_front: Any) -> None:
    """Only nginx's own errors are answered with a retry: what the app itself
    answers the stream's GET (its upgrade hook's 401/403, even a 502 of its
    own; its 503 at max_peers) reaches the client as the app sent it."""

    def upgrade(request: web.Request) -> None:
        status = request.query.get("refuse")
        if status == "401":
            raise web.HTTPUnauthorized(text="bad token")
        if status == "403":
            raise web.HTTPForbidden(text="not yours")
        if status == "502":
            raise web.HTTPBadGateway(text="the app's own 502")

    sse = sse_adapter(define_hooks(upgrade=upgrade), max_peers=1)
    app = web.Application()
    sse.setup(app, "/sse")
    front = await nginx_in_front(app)
    async with aiohttp.ClientSession() as session:
        for status, body in (
            ("401", "bad token"),
            ("403", "not yours"),
            ("502", "the app's own 502"),
        ):
            async with session.get(front.url + "/sse", params={"refuse": status}) as answer:
                assert answer.status == int(status)
                assert await answer.text() == body
        async with session.get(front.url + "/sse") as held:  # the one stream max_peers allows
            assert held.status == 200
            async with session.get(front.url + "/sse") as refused:
                assert refused.status == 503
                assert refused.headers["Retry-After"] == "5"
                assert await refused.text() == "Service Unavailable: too many streams"


# -- refusals an EventSource retries (option refusal) --------------------------------------


def refusal_app(sse: Any) -> web.Application:
    app = web.Application()
    sse.setup(app, "/sse")
    return app


async def assert_retry_answer(answer: aiohttp.ClientResponse, why: str, retry: int) -> None:
    """A 200 event stream with a comment saying ``why``, ``retry:`` and its end."""
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "text/event-stream"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert "Retry-After" not in answer.headers
    reader = EventReader(answer)
    assert await reader.rest(WAIT) == []  # the stream ends, with no event
    assert reader.comments == [" " + why]
    assert reader.parser.retry == retry
    assert not re.search(rb"^id", bytes(reader.raw), re.M), reader.raw


async def test_refusal_retry_at_max_peers(aiohttp_client: Any) -> None:
    calls: list[str] = []
    sse = sse_adapter(
        define_hooks(
            upgrade=lambda request: calls.append("upgrade"),
            open=lambda peer: (calls.append("open"), peer.send("in")),
        ),
        max_peers=1,
        refusal="retry",
        retry_after=3,
    )
    client = await aiohttp_client(refusal_app(sse))
    held = await client.get("/sse")
    assert (await EventReader(held).next(WAIT)).data == "in"
    refused = await client.get("/sse")
    await assert_retry_answer(refused, "too many streams", 3000)
    assert calls == ["upgrade", "open", "upgrade"]  # nothing beyond the upgrade hook
    assert sse.stats()["peers_rejected"] == 1
    held.close()
    await wait_until(lambda: not sse.peers, WAIT, "the first stream's end")
    admitted = await client.get("/sse")  # a slot is free again
    assert (await EventReader(admitted).next(WAIT)).data == "in"
    admitted.close()


async def test_refusal_retry_while_shutting_down(aiohttp_client: Any) -> None:
    """The shutdown refusal follows the option too: a stream that arrives
    while the adapter closes is told to retry (at the next instance)."""
    sse = sse_adapter(refusal="retry", retry_after=2)
    client = await aiohttp_client(refusal_app(sse))
    await sse.close()
    await assert_retry_answer(await client.get("/sse"), "server shutting down", 2000)
    assert sse.stats()["peers_rejected"] == 1


async def test_refusal_default_is_503(aiohttp_client: Any) -> None:
    sse = sse_adapter(max_peers=1)
    assert sse.options.refusal == "503"
    client = await aiohttp_client(refusal_app(sse))
    held = await client.get("/sse")
    refused = await client.get("/sse")
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "5"
    held.close()


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"refusal": 503}, TypeError),
        ({"refusal": None}, TypeError),
        ({"refusal": "410"}, ValueError),
        ({"refusal": "Retry"}, ValueError),
        ({"refusal": "retry", "retry_after": 0}, ValueError),  # browsers would loop at once
    ],
)
def test_refusal_is_validated(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error, match=r"^option 'refusal'"):
        sse_adapter(**options)


# -- deploy/app.py: history and recovered ---------------------------------------------------


async def test_deploy_app_tells_a_resumed_stream_whether_it_recovered(aiohttp_client: Any) -> None:
    """With history on, ``deploy/app.py`` replays what a stream missed, then
    sends ``recovered``: ``true`` when nothing was lost, ``false`` for an id
    it cannot vouch for; a first connection gets no ``recovered``."""
    from deploy.app import ROOM, make_app

    app = make_app(None, history=100)
    client = await aiohttp_client(app)
    sse = app[ADAPTER_KEY]
    first = EventReader(await client.get("/sse"))
    assert (await first.next(WAIT)).event == "worker"
    await wait_until(lambda: sse.peers, WAIT, "the first stream")
    sse.publish(ROOM, "one")
    seen = await first.next(WAIT)
    assert seen.data == "one" and seen.id
    first.response.close()
    await wait_until(lambda: not sse.peers, WAIT, "the first stream's end")
    sse.publish(ROOM, "two")  # while the stream is away
    sse.publish(ROOM, "three")

    resumed = EventReader(await client.get("/sse", headers={"Last-Event-ID": seen.id}))
    events = await resumed.take(4, WAIT)
    assert [(e.event, e.data) for e in events] == [
        ("message", "two"),  # the replay comes first: what open sent follows it
        ("message", "three"),
        ("worker", str(os.getpid())),
        ("recovered", "true"),
    ]
    resumed.response.close()
    await wait_until(lambda: not sse.peers, WAIT, "the resumed stream's end")
    sse.publish(ROOM, "four")

    # the header wins over the query parameter (a page's keepEventSource
    # recreated its EventSource with an id, which then reconnected with a newer one)
    both = EventReader(
        await client.get(
            "/sse", params={"lastEventId": seen.id}, headers={"Last-Event-ID": events[1].id}
        )
    )
    events = await both.take(3, WAIT)
    assert [(e.event, e.data) for e in events] == [
        ("message", "four"),
        ("worker", str(os.getpid())),
        ("recovered", "true"),
    ]
    both.response.close()

    # an id from another history (say, before a restart without Redis): all
    # that is held is replayed, and the page is told it may have lost some
    lost = EventReader(await client.get("/sse", params={"lastEventId": "Zz9q-1"}))
    events = await lost.take(6, WAIT)
    assert [(e.event, e.data) for e in events] == [
        ("message", "one"),
        ("message", "two"),
        ("message", "three"),
        ("message", "four"),
        ("worker", str(os.getpid())),
        ("recovered", "false"),
    ]
    sse.publish(ROOM, "five")
    assert (await lost.next(WAIT)).data == "five"  # nothing else came before it
    lost.response.close()
    await wait_until(lambda: not sse.peers, WAIT, "every stream's end")


# -- gunicorn ----------------------------------------------------------------------------


def gunicorn_installed() -> None:
    if importlib.util.find_spec("gunicorn") is None:
        missing("gunicorn", "pip install gunicorn")


class Gunicorn:
    """gunicorn in a subprocess, run from the repository's root like the doc says."""

    def __init__(self, args: list[str], env: dict[str, str], port: int | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="crossws-gunicorn-")
        self.log = open(os.path.join(self.dir, "gunicorn.log"), "w+b")  # noqa: SIM115
        self.port = port or free_port()  # a restart binds the port of the one before
        base = {k: v for k, v in os.environ.items() if k not in GUNICORN_ENV}
        # gunicorn >= 25 opens a control socket in $XDG_RUNTIME_DIR (else ~/.gunicorn)
        base.update(env, PYTHONUNBUFFERED="1", XDG_RUNTIME_DIR=self.dir)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args, "--bind", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=base,
            stdout=self.log,
            stderr=self.log,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def listening(self) -> None:
        """Wait until gunicorn's master has bound its socket (workers may still boot)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await answers(self.port):
            if self.proc.poll() is not None or loop.time() > deadline:
                raise AssertionError(f"gunicorn is not listening: {self.output()}")
            await asyncio.sleep(0.05)

    @contextlib.contextmanager
    def paused(self, pid: int) -> Iterator[None]:
        """SIGSTOP one of our workers, by its PID, so that the other one accepts
        the next connections (which of two idle workers accepts is up to the
        scheduler); SIGCONT after."""
        with open(f"/proc/{pid}/stat") as stat:
            assert int(stat.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid, "not ours"
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    async def close(self) -> int:
        status = await stop(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return status


Stream = tuple[int, EventSourceClient]  # a stream of deploy/app.py, with its worker's PID
GUNICORN_ENV = (
    "REDIS_URL",
    "SSE_CHANNEL",
    "HISTORY",
    "WEB_CONCURRENCY",
    "GUNICORN_BIND",
    "GUNICORN_CMD_ARGS",
)


def with_bind(args: list[str]) -> list[str]:
    """The doc's arguments without its ``--bind`` (the test binds a free port)."""
    out = list(args)
    if "--bind" in out:
        at = out.index("--bind")
        del out[at : at + 2]
    return out


async def open_stream(server: Gunicorn, session: aiohttp.ClientSession) -> Stream:
    """A stream of deploy/app.py; its first event names its worker's PID."""
    client = connect(server.url + "/sse", session=session, timeout=30)
    try:
        await client.connected()
        first = await client.next_event(30)
    except BaseException:
        await client.close()
        raise
    assert first.event == "worker", first
    return int(first.data), client


async def publish(server: Gunicorn, text: str) -> int:
    """POST /publish on a new connection; the PID of the worker that took it."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.post(server.url + "/publish", data=text) as answer,
    ):
        assert answer.status == 200, await answer.text()
        pid: int = (await answer.json())["pid"]
        return pid


async def read_data(client: EventSourceClient, n: int) -> list[str]:
    return [(await client.next_event(WAIT)).data for _ in range(n)]


async def read_until(client: EventSourceClient, last: str) -> list[str]:
    got: list[str] = []
    while not got or got[-1] != last:
        got.append((await client.next_event(WAIT)).data)
    return got[:-1]


async def ends_gracefully(client: EventSourceClient) -> float:
    """Read to the end of the stream (a clean end, not a reset); the ``retry``
    it was told."""
    with pytest.raises(SSEClientError, match="ended"):
        while True:
            await client.next_event(30)
    return client.reconnect_delay


def assert_clean(output: str, pids: set[int]) -> None:
    for pid in pids:
        assert f"Worker exiting (pid: {pid})" in output, output
    for bad in ("Traceback", "Task was destroyed", "Unclosed", "never retrieved", "[ERROR]"):
        assert bad not in output, output


@pytest.mark.parametrize("backplane", ["none", "redis"])
async def test_gunicorn_workers(backplane: str, request: pytest.FixtureRequest) -> None:
    gunicorn_installed()
    if backplane == "none":  # the doc's first command, as written
        env, args = doc_command("gunicorn deploy.app:create_app")
    else:  # the doc's second: the config file, REDIS_URL pointed at a real Redis
        redis: RedisServer = request.getfixturevalue("redis_server")
        env, args = doc_command("gunicorn -c deploy/gunicorn.conf.py")
        assert "REDIS_URL" in env
        env.update(REDIS_URL=redis.url, SSE_CHANNEL=f"deploy-{uuid.uuid4().hex}")
    server = Gunicorn(with_bind(args), env)
    try:
        await server.listening()
        async with aiohttp.ClientSession() as session:
            clients: list[Stream] = []
            try:
                # two streams on each worker: a first one, then two while its
                # worker is paused, then one more while the other one is
                clients.append(await open_stream(server, session))
                a = clients[0][0]
                with server.paused(a):
                    clients += [await open_stream(server, session) for _ in range(2)]
                b = clients[1][0]
                with server.paused(b):
                    clients.append(await open_stream(server, session))
                assert [pid for pid, _ in clients] == [a, b, b, a]
                pids = {a, b}

                # two publishes made by each worker
                handled: dict[int, list[str]] = {b: ["m0", "m1"], a: ["m2", "m3"]}
                for worker, other in ((b, a), (a, b)):
                    with server.paused(other):
                        for text in handled[worker]:
                            assert await publish(server, text) == worker
                everything = handled[b] + handled[a]
                if backplane == "none":
                    # each worker's publishes reach its own streams only: an "end"
                    # published by each worker closes what its streams get
                    for worker, other in ((b, a), (a, b)):
                        with server.paused(other):
                            assert await publish(server, "end") == worker
                    for pid, client in clients:
                        got = await read_until(client, "end")
                        assert got == handled[pid], (pid, got, handled)
                    warned = server.output()
                    for pid in pids:
                        assert f"worker {pid}: no backplane (REDIS_URL is not set)" in warned
                else:
                    # every stream gets every publish, each worker's in its order
                    for pid, client in clients:
                        got = await read_data(client, len(everything))
                        assert sorted(got) == sorted(everything), (pid, got)
                        for texts in handled.values():
                            assert [t for t in got if t in texts] == texts
                    assert "no backplane" not in server.output()

                # SIGTERM to the master: every worker closes its adapter, each stream
                # ends gracefully with the shutdown_retry, and gunicorn exits cleanly
                server.proc.send_signal(signal.SIGTERM)
                delays = await asyncio.gather(*(ends_gracefully(c) for _, c in clients))
                assert delays == [1.0] * len(clients)
                assert await exited(server.proc, 30) == 0, server.output()
            finally:
                for _, client in clients:
                    await client.close()
        output = server.output()
        assert_clean(output, pids)
        if backplane == "redis":  # gunicorn.conf.py sends the app's log lines along
            for pid in pids:
                held = sum(1 for p, _ in clients if p == pid)
                closed = f"worker {pid}: peer "
                lines = [line for line in output.splitlines() if closed in line]
                assert len(lines) == held, output
                assert all(line.endswith("closed (server shutdown)") for line in lines), lines
    finally:
        await server.close()


# -- CORS --------------------------------------------------------------------------------

ORIGIN = "https://app.example.com"


def cors_app(hooks: Any, origin: str = ORIGIN) -> web.Application:
    """The doc's aiohttp-cors code, as written (with ``origin`` for its origin)."""
    if importlib.util.find_spec("aiohttp_cors") is None:
        missing("aiohttp-cors", "pip install aiohttp-cors")
    code = doc_block("cors")
    assert "aiohttp_cors" in code and ORIGIN in code
    namespace: dict[str, Any] = {"hooks": hooks}
    exec(compile(code.replace(ORIGIN, origin), "docs/deployment.md", "exec"), namespace)
    app: web.Application = namespace["app"]
    assert [route.method for route in namespace["routes"]] == ["GET", "POST"]
    return app


def header_names(value: str) -> set[str]:
    return {name.strip().lower() for name in value.split(",")}


async def test_cors(aiohttp_server: Any) -> None:
    hooks = Recorder()
    server = await aiohttp_server(cors_app(hooks))
    url = str(server.make_url("/sse"))
    async with aiohttp.ClientSession() as session:
        # the preflight of a bidirectional POST
        preflight = {
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-crossws-id, content-type",
        }
        async with session.options(url, headers=preflight) as answer:
            assert answer.status == 200
            assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert answer.headers["Access-Control-Allow-Credentials"] == "true"
            assert "post" in header_names(answer.headers["Access-Control-Allow-Methods"])
            allowed = header_names(answer.headers["Access-Control-Allow-Headers"])
            assert {"x-crossws-id", "content-type"} <= allowed
        # the stream, cross-origin
        async with connect(
            url, session=session, headers={"Origin": ORIGIN}, timeout=WAIT
        ) as client:
            headers = client.headers
            assert headers["Content-Type"].startswith("text/event-stream")
            assert headers["Access-Control-Allow-Origin"] == ORIGIN
            assert "x-crossws-id" in header_names(headers["Access-Control-Expose-Headers"])
            assert headers["x-crossws-id"] == client.id
            # a cross-origin POST reaches the message hook
            assert await client.send("hello") == 200
            assert hooks.messages == ["hello"]
        # another origin: its preflight is refused, its stream carries no CORS headers
        async with session.options(
            url, headers={**preflight, "Origin": "https://evil.example"}
        ) as answer:
            assert answer.status == 403
            assert "Access-Control-Allow-Origin" not in answer.headers
        async with connect(
            url, session=session, headers={"Origin": "https://evil.example"}
        ) as client:
            assert "Access-Control-Allow-Origin" not in client.headers
            assert "Access-Control-Expose-Headers" not in client.headers


# -- Chromium ----------------------------------------------------------------------------


async def page_on(browser: Browser, url: str) -> Page:
    context = await browser.new_context(ignore_https_errors=True)  # our self-signed certificate
    page = await context.new_page()
    await page.goto(url + "/")
    return page


async def blank_page(request: web.Request) -> web.Response:
    return web.Response(text="<!doctype html><title>deploy</title>", content_type="text/html")


OPEN_SOURCES = """(n) => {
    window.sources = [];
    for (let i = 0; i < n; i++) window.sources.push(new EventSource("/sse"));
}"""
STATES = "() => window.sources.map((source) => source.readyState)"
# A streamed upload (what crossws's WebSocketSSE sends): first a piece, then
# the rest when told; resolves to "status <n>" or "failed: <error>".
START_UPLOAD = """() => {
    let piece;
    const body = new ReadableStream({ start(controller) { piece = controller; } })
        .pipeThrough(new TextEncoderStream());
    piece.enqueue("first");
    window.finishUpload = () => { piece.enqueue("second"); piece.close(); };
    window.upload = fetch("/sse", {
        method: "POST", duplex: "half", body,
        headers: { "content-type": "application/octet-stream", "x-crossws-id": "no-such-peer" },
    }).then((answer) => "status " + answer.status, (error) => "failed: " + error);
}"""


@pytest.mark.browser
async def test_browser_http11_limit_and_http2(nginx_in_front: Any, chromium: Browser) -> None:
    hooks = Recorder()
    sse = sse_adapter(hooks, bidir=True)
    app = web.Application()
    sse.setup(app, "/sse")
    app.router.add_get("/", blank_page)
    front = await nginx_in_front(app, tls=True)

    async def states(page: Page) -> list[int]:
        result: list[int] = await page.evaluate(STATES)
        return result

    # HTTP/1.1: 6 connections per origin; the 7th stream waits for one of them
    page = await page_on(chromium, front.url)
    await page.evaluate(OPEN_SOURCES, 7)
    await wait_until(lambda: len(sse.peers) == 6, WAIT, "6 streams at the server")
    await wait_until(lambda: _count(states(page), 1, 6), WAIT, "6 EventSources open in the browser")
    assert sorted(await states(page)) == [0, 1, 1, 1, 1, 1, 1]
    assert len(sse.peers) == 6
    await page.evaluate("() => window.sources.find((source) => source.readyState === 1).close()")
    await wait_until(lambda: len(hooks.opened) == 7, WAIT, "the 7th stream, once one closed")
    await page.evaluate("() => window.sources.forEach((source) => source.close())")
    await wait_until(lambda: not sse.peers, WAIT, "every stream closed")
    # a streamed upload is refused over HTTP/1.1
    await page.evaluate(START_UPLOAD)
    assert (await page.evaluate("() => window.upload")).startswith("failed: TypeError")
    assert hooks.messages == []
    await page.context.close()

    # HTTP/2 (TLS): 10 streams on one origin, and streamed uploads pass
    page = await page_on(chromium, front.tls_url)
    protocol = 'performance.getEntriesByType("navigation")[0].nextHopProtocol'
    assert await page.evaluate(protocol) == "h2"
    await page.evaluate(OPEN_SOURCES, 10)
    await wait_until(lambda: _count(states(page), 1, 10), WAIT, "10 EventSources open")
    await wait_until(lambda: len(sse.peers) == 10, WAIT, "10 streams at the server")
    peer = next(iter(sse.peers.values()))
    await page.evaluate(START_UPLOAD.replace("no-such-peer", peer.id))
    await wait_until(lambda: hooks.messages == ["first"], WAIT, "the first piece of an open upload")
    await page.evaluate("() => window.finishUpload()")
    assert await page.evaluate("() => window.upload") == "status 200"
    assert hooks.messages == ["first", "second"]
    await page.context.close()
    await wait_until(lambda: not sse.peers, WAIT, "every stream closed")


async def _count(states: Awaitable[list[int]], state: int, n: int) -> bool:
    return (await states).count(state) == n


OPEN_CROSS_ORIGIN = """(url) => {
    window.source = new EventSource(url, { withCredentials: true });
    window.source.addEventListener("crossws-id", (event) => { window.peerId = event.data; });
}"""
SEND_CROSS_ORIGIN = """async (url) => {
    const posted = await fetch(url, {
        method: "POST", credentials: "include", body: "hello",
        headers: { "x-crossws-id": window.peerId, "content-type": "application/octet-stream" },
    });
    const stream = new AbortController();
    const seen = await fetch(url, { signal: stream.signal, credentials: "include" });
    const header = seen.headers.get("x-crossws-id");
    stream.abort();
    window.source.close();
    return { posted: posted.status, header };
}"""


@pytest.mark.browser
async def test_browser_cors(aiohttp_server: Any, chromium: Browser) -> None:
    """A page on one origin uses the stream of another, set up by the doc's
    code: an EventSource with credentials, which reconnects with Last-Event-ID
    without a preflight; a POST after its preflight; the exposed x-crossws-id."""
    page_server = await aiohttp_server(_page_app())
    origin = str(page_server.make_url("")).rstrip("/")

    hooks = Recorder()
    resumed: list[str | None] = []
    preflights: list[str] = []

    def open_(peer: Peer) -> None:
        hooks.open(peer)
        resumed.append(peer.last_event_id)
        if len(resumed) == 1:  # end the first stream after an event with an id
            peer.send("before", id="7", retry=100)
            peer.close()

    @web.middleware
    async def note_preflights(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method == "OPTIONS":
            preflights.append(request.headers.get("Access-Control-Request-Method", ""))
        response: web.StreamResponse = await handler(request)
        return response

    app = cors_app(define_hooks(open=open_, message=hooks.message), origin=origin)
    app.middlewares.append(note_preflights)
    stream_server = await aiohttp_server(app)
    assert stream_server.port != page_server.port  # so: another origin
    url = str(stream_server.make_url("/sse"))

    page = await page_on(chromium, origin)
    await page.evaluate(OPEN_CROSS_ORIGIN, url)
    await wait_until(lambda: resumed[1:] == ["7"], WAIT, "the reconnect with Last-Event-ID")

    async def current_id() -> bool:
        return bool(await page.evaluate("() => window.peerId") == hooks.opened[1].id)

    await wait_until(current_id, WAIT, "the second stream's crossws-id in the page")
    assert preflights == [], "the EventSource sent a preflight"
    result = await page.evaluate(SEND_CROSS_ORIGIN, url)
    assert result["posted"] == 200
    assert hooks.messages == ["hello"]
    assert result["header"], "x-crossws-id is not exposed to fetch"
    assert preflights == ["POST"]
    await page.context.close()


def _page_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", blank_page)
    return app


# -- Chromium across a gunicorn restart ----------------------------------------------------


def keep_event_source_js() -> str:
    """The doc's keepEventSource, as written."""
    code = doc_block("keep-event-source")
    assert "function keepEventSource" in code
    return code


# deploy/app.py's stream read through keepEventSource, and what the page saw.
# errorStates: the EventSource's readyState at each error (0: the browser
# retries by itself; 2: it gave up, and keepEventSource opens another one).
WATCH_ROOM = """() => {
    const seen = { worker: [], events: [], recovered: [], opens: 0, errorStates: [] };
    window.seen = seen;
    window.stream = keepEventSource("/sse", {
        open: () => { seen.opens += 1; },
        error: (event) => { seen.errorStates.push(event.target.readyState); },
        worker: (event) => { seen.worker.push(event.data); },
        message: (event) => { seen.events.push([event.data, event.lastEventId]); },
        recovered: (event) => { seen.recovered.push(event.data); },
    });
}"""


def ids_in_order(ids: list[str]) -> bool:
    """Cluster ids (``<epoch>-<seq in hex>``): one epoch, strictly increasing."""
    epochs = {i.rsplit("-", 1)[0] for i in ids}
    seqs = [int(i.rsplit("-", 1)[1], 16) for i in ids]
    return len(epochs) == 1 and all(a < b for a, b in itertools.pairwise(seqs))


@pytest.mark.browser
@pytest.mark.parametrize("fallback", [True, False], ids=["nginx-answers", "page-reopens"])
async def test_browser_resumes_across_a_gunicorn_restart(fallback: bool, chromium: Browser) -> None:
    """Chromium behind deploy/nginx.conf reads deploy/app.py under gunicorn (2
    workers, RedisSync, history: the doc's command) through the doc's
    keepEventSource, while another instance of the cluster publishes every
    50 ms. gunicorn is stopped; once the page has met the gap, it is started
    again on the same port. The page gets every event exactly once and in
    order, those of the gap included, and ``recovered`` true.

    ``nginx-answers``: nginx answers the gap with its retry stream, and the
    EventSource never gives up (readyState never 2). ``page-reopens``: without
    the error_page line the browser gives up on nginx's 502, and
    keepEventSource opens a new EventSource with ``lastEventId``."""
    from aiohttp_crossws_sse.sync import RedisSync
    from deploy.app import ROOM

    gunicorn_installed()
    binary = nginx_binary()
    env, args = doc_command("HISTORY=")
    history = int(env["HISTORY"])
    assert "REDIS_URL" in env and history > 0
    outputs: list[str] = []
    with running_redis() as redis:
        channel = f"deploy-{uuid.uuid4().hex}"
        env.update(REDIS_URL=redis.url, SSE_CHANNEL=channel)
        publisher = sse_adapter(sync=RedisSync(redis.url, channel=channel), history=history)
        await publisher.start()
        published: list[str] = []
        publishing = True

        async def keep_publishing() -> None:
            while publishing:
                text = f"event {len(published)}"
                publisher.publish(ROOM, text)
                published.append(text)
                await asyncio.sleep(0.05)

        server = Gunicorn(with_bind(args), env)
        proxy = Nginx(binary)
        publish_task: asyncio.Task[None] | None = None
        try:
            await server.listening()
            await proxy.start(server.port, changes=() if fallback else ((FALLBACK, ""),))
            context = await chromium.new_context()
            page = await context.new_page()
            await page.goto(proxy.url + "/")  # the app's 404: a page of the stream's origin
            await page.add_script_tag(content=keep_event_source_js())
            await page.evaluate(WATCH_ROOM)

            async def seen() -> dict[str, Any]:
                result: dict[str, Any] = await page.evaluate("window.seen")
                return result

            async def until(what: str, check: Callable[[dict[str, Any]], bool]) -> None:
                async def met() -> bool:
                    return check(await seen())

                await wait_until(met, 60, what, interval=0.1)

            await until("the page's stream", lambda s: len(s["worker"]) == 1)
            publish_task = asyncio.create_task(keep_publishing())
            await until("10 events", lambda s: len(s["events"]) >= 10)

            # the restart: stop gunicorn (each stream ends with shutdown_retry)
            assert await stop(server.proc) == 0, server.output()
            outputs.append(server.output())
            await server.close()
            stopped_at = len(published)
            before = await seen()
            if fallback:  # the browser reconnects, and nginx answers it
                await until("nginx's answer in the page", lambda s: s["opens"] > before["opens"])
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(proxy.url + "/sse") as answer,
                ):
                    assert answer.status == 200
                    assert answer.headers["Content-Type"] == "text/event-stream"
            else:  # nginx's 502: the browser gives up
                await until("the browser giving up", lambda s: 2 in s["errorStates"])
            await wait_until(lambda: len(published) >= stopped_at + 5, 30, "publishes in the gap")
            gap = await seen()
            assert gap["worker"] == before["worker"] and gap["recovered"] == []

            server = Gunicorn(with_bind(args), env, port=server.port)
            await server.listening()
            await until("recovered", lambda s: bool(s["recovered"]))
            resumed_at = len(published)
            await until("live events", lambda s: len(s["events"]) > resumed_at + 5)
            publishing = False
            await publish_task
            await until("every event", lambda s: len(s["events"]) >= len(published))
            after = await seen()
            texts = [text for text, _ in after["events"]]
            assert texts == published  # everything, once, in order: the gap's too
            assert ids_in_order([event_id for _, event_id in after["events"]])
            assert after["recovered"] == ["true"]
            assert len(after["worker"]) == 2  # a worker of the new gunicorn
            if fallback:
                assert 2 not in after["errorStates"], after["errorStates"]
            else:
                assert 2 in after["errorStates"]
            await context.close()
            assert await stop(server.proc) == 0, server.output()
            outputs.append(server.output())
        finally:
            publishing = False
            if publish_task is not None:
                await publish_task
            await proxy.stop()
            await server.close()
            await publisher.close()
    for output in outputs:
        for bad in ("Traceback", "Task was destroyed", "Unclosed", "never retrieved", "[ERROR]"):
            assert bad not in output, output
