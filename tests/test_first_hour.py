"""A new user's first hour, following only the README and the docs, works as written.

Builds the sdist and the wheel (``python -m build`` must warn about nothing),
installs the wheel with the ``testing`` and ``prometheus`` extras into a fresh
venv, writes every block of the README and of ``docs/`` marked
``<!-- first-hour: NAME -->`` into a fresh project directory, then does what
they say with them (the README's quick start; docs/testing.md,
docs/concepts.md and docs/operations.md for the rest): runs the
test example with pytest, the quick start with its Python client, the bare
handler and the metrics endpoint, each as ``python NAME`` with the fresh
venv's interpreter.

pip installs what ``PIP_CONSTRAINT`` allows: ``./scripts/test`` points it at
an export of ``uv.lock``, so CI builds and installs the locked versions
(``./scripts/test-latest`` runs this with the newest ones).

One module-scoped fixture builds and installs once. Deselect with
``-m "not first_hour"``. Under ``CI=true`` a failing build or install fails;
elsewhere it is skipped when pip cannot reach the package index.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import aiohttp
import pytest

from aiohttp_crossws_sse.testing import EventReader, wait_for_event

pytestmark = pytest.mark.first_hour  # deselect with -m "not first_hour"

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# Where the first-hour blocks are: the README's quick start, the guides.
DOC_FILES = (README, *sorted((ROOT / "docs").rglob("*.md")))

# The blocks a new user copies, by the file name the README gives them.
EXPECTED_BLOCKS = ("app.py", "client.py", "pytest.ini", "test_app.py", "routes.py", "metrics.py")
# The scripts that serve (or connect to) the README's hardcoded port.
USES_THE_PORT = ("app.py", "client.py", "routes.py", "metrics.py")
README_PORT = "8080"

BLOCK = re.compile(
    r"^<!-- first-hour: (?P<name>\S+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.M | re.S
)
MARKER = re.compile(r"^<!-- first-hour: (\S+) -->", re.M)

# Bounds that keep a broken step from hanging the suite, never measurements.
BUILD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 600.0
PYTEST_TIMEOUT = 180.0
LISTEN_TIMEOUT = 30.0
EVENT_TIMEOUT = 15.0
EXIT_TIMEOUT = 15.0

# What pip (and build's isolated environment) print when the index is unreachable.
NO_INDEX = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|No route to host|ProxyError"
    r"|ConnectTimeoutError|Read timed out|Connection refused|Could not fetch URL"
    r"|\(from versions: none\)",
    re.I,
)

# Variables of the test process that a fresh user's shell would not have.
NOT_THE_USERS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONWARNINGS",
    "PYTHONSAFEPATH",
    "PYTHONDONTWRITEBYTECODE",  # setuptools warns about byte-compiling without it
    "VIRTUAL_ENV",
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def clean_env() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if key not in NOT_THE_USERS and not key.startswith("PYTEST_")
    }


def run(
    args: list[str | Path], *, timeout: float, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    what = " ".join(str(a) for a in args)
    try:
        return subprocess.run(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except subprocess.TimeoutExpired as exc:
        output = (
            exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
        )
        pytest.fail(f"`{what}` did not finish within {timeout}s; output so far:\n{output}")


def fail_or_skip(step: str, result: subprocess.CompletedProcess[str]) -> None:
    """A failed step that needed the package index: skipped outside CI when
    the index is unreachable, a failure otherwise."""
    message = f"{step} failed (exit {result.returncode}):\n{result.stdout}"
    if not in_ci() and NO_INDEX.search(result.stdout):
        pytest.skip(f"{step}: the package index is unreachable (set CI=true to fail instead)")
    pytest.fail(message)


def readme_blocks() -> dict[str, str]:
    """The first-hour blocks of the README and the docs, by name."""
    blocks: dict[str, str] = {}
    where: dict[str, str] = {}
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        doc = path.relative_to(ROOT)
        found = []
        for match in BLOCK.finditer(text):
            name = match["name"]
            assert name not in blocks, (
                f"{doc} and {where[name]} mark two blocks `<!-- first-hour: {name} -->`"
            )
            blocks[name] = match["code"]
            where[name] = str(doc)
            found.append(name)
        markers = MARKER.findall(text)
        assert sorted(markers) == sorted(found), (
            f"{doc}: a `<!-- first-hour: NAME -->` marker must be on the line right before a "
            f"```python / ```ini fence; markers {markers}, blocks found {sorted(found)}"
        )
    missing = [name for name in EXPECTED_BLOCKS if name not in blocks]
    assert not missing, (
        f"neither README.md nor docs/ has a `<!-- first-hour: NAME -->` block for {missing} "
        f"(found {sorted(blocks)})"
    )
    for name in USES_THE_PORT:
        assert README_PORT in blocks[name], (
            f"{where[name]}'s {name} no longer mentions port {README_PORT}: update this test"
        )
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class FirstHour:
    """The built distributions, the fresh venv and the project copied from the README."""

    build_output: str
    sdist: Path
    wheel: Path
    python: Path
    project: Path
    port: int
    env: dict[str, str] = field(repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def first_hour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstHour]:
    blocks = readme_blocks()  # a missing block fails before the slow part
    tmp = tmp_path_factory.mktemp("first_hour")

    # 1. Build, as a release would: isolated, from the repository root.
    dist = tmp / "dist"
    built = run(
        [sys.executable, "-m", "build", "--outdir", dist],
        cwd=ROOT,
        env=clean_env(),
        timeout=BUILD_TIMEOUT,
    )
    if built.returncode != 0:
        if "No module named build" in built.stdout:
            pytest.fail("`build` is not installed in the test venv: pip install -e '.[test]'")
        fail_or_skip("python -m build", built)
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")

    # 2. A fresh venv (no system site packages) and the README's install line with its extras.
    venv = tmp / "venv"
    made = run([sys.executable, "-m", "venv", venv], env=clean_env(), timeout=BUILD_TIMEOUT)
    assert made.returncode == 0, f"python -m venv failed:\n{made.stdout}"
    python = venv / "bin" / "python"
    env = clean_env()
    env["VIRTUAL_ENV"] = str(venv)  # as if the user had activated it
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    installed = run(
        [python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
         f"{wheel}[testing,prometheus]"],
        env=env,
        timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    if installed.returncode != 0:
        fail_or_skip(f"pip install {wheel.name}[testing,prometheus]", installed)

    # 3. The project: every marked block, as the README shows it. The one change:
    # the README's port 8080 becomes a port free on this machine, in every file.
    port = free_port()
    project = tmp / "project"
    project.mkdir()
    for name, code in blocks.items():
        (project / name).write_text(code.replace(README_PORT, str(port)), encoding="utf-8")

    yield FirstHour(built.stdout, sdist, wheel, python, project, port, env)


# -- running the README's scripts ----------------------------------------------------


class Script:
    """``python NAME`` in the project directory, with the fresh venv's
    interpreter; stderr (and stdout, unless piped) go to files."""

    def __init__(self, site: FirstHour, name: str) -> None:
        self.site = site
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_path = site.project / f"{name}.stderr"
        self.stdout_path = site.project / f"{name}.stdout"
        self.exit_code: int | None = None
        self.killed = False

    async def start(self, *, pipe_stdout: bool = False) -> Script:
        with self.stderr_path.open("wb") as err, self.stdout_path.open("wb") as out:
            stdout: int | IO[bytes] = asyncio.subprocess.PIPE if pipe_stdout else out
            self.proc = await asyncio.create_subprocess_exec(
                str(self.site.python),
                self.name,
                cwd=self.site.project,
                env=self.site.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                stderr=err,
            )
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        state = "running" if self.proc and self.proc.returncode is None else "exited"
        if self.proc and self.proc.returncode is not None:
            state = f"exited with code {self.proc.returncode}"
        return f"`python {self.name}` ({state}); its stderr:\n{self.stderr() or '(empty)'}"

    async def wait_listening(self) -> None:
        """Until the port accepts connections (bounded), or fail saying why."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LISTEN_TIMEOUT
        while True:
            if self.proc.returncode is not None:
                pytest.fail(f"exited before listening on 127.0.0.1:{self.site.port}: "
                            f"{self.describe()}")  # fmt: skip
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.site.port)
            except OSError:
                if loop.time() > deadline:
                    pytest.fail(f"nothing listens on 127.0.0.1:{self.site.port} "
                                f"{LISTEN_TIMEOUT}s after starting {self.describe()}")  # fmt: skip
                await asyncio.sleep(0.05)
            else:
                writer.close()
                await writer.wait_closed()
                return

    async def readline(self, *others: Script) -> str:
        """The next stdout line (piped), or fail with everyone's stderr."""
        assert self.proc is not None and self.proc.stdout is not None
        context = "".join(f"\n{other.describe()}" for other in others)
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), EVENT_TIMEOUT)
        except TimeoutError:
            pytest.fail(f"no line within {EVENT_TIMEOUT}s from {self.describe()}{context}")
        if not line:
            await asyncio.wait_for(self.proc.wait(), EXIT_TIMEOUT)
            pytest.fail(f"stdout ended: {self.describe()}{context}")
        return line.decode().rstrip("\r\n")

    async def stop(self) -> int | None:
        """SIGTERM to this process, then SIGKILL after a bounded wait; its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), EXIT_TIMEOUT)
            except TimeoutError:
                self.killed = True
                proc.kill()
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.read()  # to EOF: nothing left unread on the pipe
        self.exit_code = proc.returncode
        return self.exit_code

    async def assert_stops_cleanly(self) -> None:
        code = await self.stop()
        assert not self.killed, f"still running {EXIT_TIMEOUT}s after SIGTERM: {self.describe()}"
        stderr = self.stderr()
        assert "Traceback" not in stderr, f"a traceback on SIGTERM: {self.describe()}"
        assert code == 0, f"exit code {code} on SIGTERM: {self.describe()}"


# -- the tests -------------------------------------------------------------------------


def test_build_warns_about_nothing_and_ships_what_it_should(first_hour: FirstHour) -> None:
    noisy = [
        line
        for line in first_hour.build_output.splitlines()
        if re.search(r"warning|deprecat", line, re.I)
    ]
    assert not noisy, "`python -m build` warned:\n" + "\n".join(noisy)

    with tarfile.open(first_hour.sdist) as sdist:
        names = sdist.getnames()
    root = PurePosixPath(names[0]).parts[0]
    shipped_tests = [n for n in names if "tests" in PurePosixPath(n).parts[1:]]
    assert not shipped_tests, (
        f"the sdist ships tests (ship them complete or not at all): {shipped_tests}"
    )
    assert f"{root}/LICENSE" in names, f"the sdist has no LICENSE: {names}"

    with zipfile.ZipFile(first_hour.wheel) as wheel:
        members = wheel.namelist()
    assert "aiohttp_crossws_sse/py.typed" in members, f"the wheel has no py.typed: {members}"
    licenses = [m for m in members if re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", m)]
    assert licenses, f"the wheel has no license file: {members}"
    assert not [m for m in members if m.startswith("tests/")], f"the wheel ships tests: {members}"


def test_the_readme_test_example_passes(first_hour: FirstHour) -> None:
    result = run(
        [first_hour.python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=first_hour.project,
        env=first_hour.env,
        timeout=PYTEST_TIMEOUT,
    )
    output = result.stdout
    assert result.returncode == 0, f"pytest exited with {result.returncode}:\n{output}"
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    passed = re.search(r"\b(\d+) passed\b", summary)
    assert passed and int(passed[1]) == 2, f"expected `2 passed`, got {summary!r}:\n{output}"
    assert not re.search(r"failed|error|warning|skipped|deselected", summary), (
        f"a new user's first pytest run is not clean: {summary!r}:\n{output}"
    )


async def test_quick_start_page_say_and_client(first_hour: FirstHour) -> None:
    app = Script(first_hour, "app.py")
    client = Script(first_hour, "client.py")
    try:
        await app.start()
        await app.wait_listening()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{first_hour.base}/") as response:
                assert response.status == 200, app.describe()
                assert response.content_type == "text/html"
                page = await response.text()
            assert 'new EventSource("/sse")' in page, page

            await client.start(pipe_stdout=True)
            welcome = await client.readline(app)
            assert welcome.startswith("welcome, "), f"client.py printed {welcome!r} first"

            async with http.post(f"{first_hour.base}/say", data={"text": "hi"}) as response:
                assert response.status == 204, f"POST /say: {response.status} {app.describe()}"
            assert await client.readline(app) == "hi"

        await client.stop()
        await app.assert_stops_cleanly()
    finally:
        await client.stop()
        await app.stop()


async def test_a_bare_handler_registered_by_hand(first_hour: FirstHour) -> None:
    routes = Script(first_hour, "routes.py")
    try:
        await routes.start()
        await routes.wait_listening()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{first_hour.base}/events") as response,
        ):
            assert response.status == 200, f"GET /events: {response.status} {routes.describe()}"
            await wait_for_event(
                EventReader(response), data="hello from /events", timeout=EVENT_TIMEOUT
            )
        await routes.assert_stops_cleanly()
    finally:
        await routes.stop()


async def test_metrics_for_prometheus(first_hour: FirstHour) -> None:
    metrics = Script(first_hour, "metrics.py")
    peers = re.compile(r'^crossws_sse_peers\{adapter="/sse"\} 1\.0$', re.M)
    deliveries = re.compile(r'^crossws_sse_deliveries_total\{adapter="/sse"\} \S+$', re.M)
    try:
        await metrics.start()
        await metrics.wait_listening()
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{first_hour.base}/sse") as stream,
        ):
            assert stream.status == 200, f"GET /sse: {stream.status} {metrics.describe()}"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + EVENT_TIMEOUT
            while True:  # the peer opens just after the response head: poll, bounded
                async with http.get(f"{first_hour.base}/metrics") as response:
                    assert response.status == 200, f"GET /metrics: {response.status}"
                    exposition = await response.text()
                if peers.search(exposition):
                    break
                if loop.time() > deadline:
                    ours = [line for line in exposition.splitlines() if "crossws_sse" in line]
                    pytest.fail(
                        f'no `crossws_sse_peers{{adapter="/sse"}} 1.0` within {EVENT_TIMEOUT}s '
                        f"of one open stream; /metrics said (crossws_sse lines):\n"
                        + ("\n".join(ours) or "(none)")
                    )
                await asyncio.sleep(0.05)
            assert deliveries.search(exposition), f"no deliveries counter:\n{exposition}"
        await metrics.assert_stops_cleanly()
    finally:
        await metrics.stop()
