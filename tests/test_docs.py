"""The documentation: every code block checked, the README one screen, the
site built, offline, with an API reference of every public name, and read in
Chromium without a broken internal link.

Every fenced code block of ``README.md``, ``CHANGELOG.md`` and ``docs/**.md``
carries a marker on the line right before its fence (docs/contributing.md,
"Code blocks", is the convention):

- ``<!-- first-hour: NAME -->``: a file of the first-hour project that
  tests/test_first_hour.py writes and runs;
- ``<!-- check: run NAME -->``: a test reads it with ``doc_block("NAME")``
  and runs it (or compares it with the file it shows); a name no test asks
  for fails here;
- ``<!-- check: mypy -->``: a Python fragment, type-checked here with
  ``mypy --strict``; what it needs and does not show (imports, a ``hooks``
  object) goes after ``mypy`` in the same comment, up to its ``-->``;
- ``<!-- check: exempt -- REASON -->``: not Python, and not run, for the
  reason given (which must be there).

The site tests build the site with ``./scripts/docs`` (the ``docs`` group of
uv.lock, in ``.venv-docs/``), into a temporary directory. Under ``CI=true``
a failing build fails; elsewhere it is skipped when the package index is
unreachable. The Chromium test needs the system's Chromium (see
tests/browser/conftest.py).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import html.parser
import importlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urlsplit

import aiohttp
import pytest
from aiohttp import web

from tests.browser import conftest as browser_conftest

if TYPE_CHECKING:
    from playwright.async_api import Browser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 250
WAIT = 30.0  # bound of every wait on a process or a page; never a measurement

# Chromium (tests/browser/conftest.py's fixture), as the fixture ``chromium``.
chromium = browser_conftest.browser


# -- the blocks ----------------------------------------------------------------------


def doc_files() -> list[Path]:
    """Every Markdown file whose blocks are shown: the README, the changelog
    (the site includes it) and the pages of docs/."""
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: str  # the comment before the fence, without <!-- and -->, or ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        """``first-hour``, ``run``, ``mypy``, ``exempt``, or ``""`` (unmarked)."""
        if self.marker.startswith("first-hour:"):
            return "first-hour"
        found = re.match(r"check:\s*(run|mypy|exempt)\b", self.marker)
        return found[1] if found else ""

    @property
    def name(self) -> str:
        """The NAME of ``first-hour: NAME`` or ``check: run NAME``."""
        found = re.match(r"(?:first-hour:|check:\s*run)\s+(\S+)\s*$", self.marker)
        return found[1] if found else ""

    @property
    def reason(self) -> str:
        found = re.match(r"check:\s*exempt\s*--\s*(.*)$", self.marker, re.S)
        return found[1].strip() if found else ""

    @property
    def prelude(self) -> str:
        """What a ``check: mypy`` fragment needs and does not show."""
        found = re.match(r"check:\s*mypy[ \t]*\n?(.*)$", self.marker, re.S)
        return found[1] if found else ""


FENCE = re.compile(r"^(?P<indent>(?:> ?)?[ \t]*)(?P<fence>```+)(?P<lang>[\w+-]*)[ \t]*$")


def blocks_of(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, each with the comment that
    ends on the line right before its fence (blockquoted and indented fences
    included: their prefix is taken off the code)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        prefix, fence = opening["indent"], opening["fence"]
        end = i + 1
        while end < len(lines) and lines[end].strip().lstrip(">").strip() != fence:
            end += 1
        assert end < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: the fence is never closed"
        code = "\n".join(line.removeprefix(prefix) for line in lines[i + 1 : end]) + "\n"
        found.append(Block(path, i + 1, opening["lang"], code, marker_before(lines, i, prefix)))
        i = end + 1
    return found


def marker_before(lines: list[str], fence: int, prefix: str) -> str:
    """The ``<!-- ... -->`` comment whose last line is right before line ``fence``."""
    last = fence - 1
    if last < 0 or not lines[last].removeprefix(prefix).rstrip().endswith("-->"):
        return ""
    first = last
    while first >= 0 and "<!--" not in lines[first]:
        first -= 1
    if first < 0:
        return ""
    text = "\n".join(line.removeprefix(prefix) for line in lines[first : last + 1])
    return text[text.index("<!--") + 4 : text.rindex("-->")].strip()


def doc_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks_of(path)]


def doc_block(name: str) -> str:
    """The code of the one block marked ``<!-- check: run NAME -->``."""
    named = [block for block in doc_blocks() if block.kind == "run" and block.name == name]
    assert len(named) == 1, (
        f"the docs mark {len(named)} blocks `<!-- check: run {name} -->` "
        f"({[block.where for block in named]}); exactly one expected"
    )
    return named[0].code


def test_every_code_block_is_run_or_type_checked() -> None:
    blocks = doc_blocks()
    assert blocks, "no code block found at all"
    problems = []
    for block in blocks:
        kind = block.kind
        if not kind:
            problems.append(f"{block.where}: a ```{block.lang} block without a marker")
        elif block.lang == "python" and kind == "exempt":
            problems.append(f"{block.where}: a Python block is run or type-checked, never exempt")
        elif kind == "exempt" and not block.reason:
            problems.append(f"{block.where}: `check: exempt` needs `-- REASON`")
        elif kind in ("run", "first-hour") and not block.name:
            problems.append(f"{block.where}: `{block.marker}` names no block")
        elif kind == "mypy" and block.lang != "python":
            problems.append(f"{block.where}: `check: mypy` on a ```{block.lang} block")
        if not block.lang:
            problems.append(f"{block.where}: a fence without a language")
    # a marker that is not right before a fence would mark nothing
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        marked = len(re.findall(r"^(?:> ?)?[ \t]*<!--\s*(?:check:|first-hour:)", text, re.M))
        fenced = sum(1 for block in blocks_of(path) if block.kind)
        if marked != fenced:
            problems.append(
                f"{path.relative_to(ROOT)}: {marked} markers but {fenced} marked blocks: "
                "a marker must end on the line right before its fence"
            )
    assert not problems, "\n".join(problems)


def test_every_run_block_is_asked_for_by_a_test() -> None:
    names = [block.name for block in doc_blocks() if block.kind == "run"]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"`check: run NAME` used twice: {duplicates}"
    tests = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("*.py"))
    unclaimed = [
        name
        for name in names
        if f'doc_block("{name}")' not in tests and f'run_block("{name}"' not in tests
    ]
    assert not unclaimed, (
        f"no test reads these blocks with doc_block(NAME), so none runs them: {unclaimed}"
    )


def test_every_first_hour_block_is_a_file_of_the_first_hour() -> None:
    from tests.test_first_hour import EXPECTED_BLOCKS

    names = sorted(block.name for block in doc_blocks() if block.kind == "first-hour")
    assert names == sorted(EXPECTED_BLOCKS), (
        f"first-hour blocks {names}; tests/test_first_hour.py runs {sorted(EXPECTED_BLOCKS)}"
    )


def fragment_module(block: Block) -> str:
    """A ``check: mypy`` block as a module: its prelude, then its code
    (inside an ``async def`` when it awaits at the top level, as a fragment
    of a coroutine does)."""
    code = block.code
    try:
        compile(code, block.where, "exec")
    except SyntaxError as exc:
        message = str(exc)
        if "outside" not in message or ("await" not in message and "async" not in message):
            raise AssertionError(f"{block.where}: {exc}") from exc
        code = "async def _fragment() -> None:\n" + "".join(
            f"    {line}\n" for line in code.splitlines()
        )
    return f"# {block.where}\n{block.prelude}\n{code}"


def test_python_fragments_type_check(tmp_path: Path) -> None:
    fragments = [block for block in doc_blocks() if block.kind == "mypy"]
    assert fragments, "no `check: mypy` block found"
    modules = tmp_path / "fragments"
    modules.mkdir()
    where: dict[str, Block] = {}
    for block in fragments:
        stem = re.sub(r"\W", "_", f"{block.path.stem}_{block.line}")
        name = f"doc_{stem}.py"
        (modules / name).write_text(fragment_module(block), encoding="utf-8")
        where[name] = block
    # Packages the test venv lacks or that have no types (docs/migrating.md's
    # sse-starlette app, aiohttp-cors): taken as untyped.
    (tmp_path / "mypy.ini").write_text(
        # the package from its source; a prelude's `def f() -> T: ...` is a signature
        f"[mypy]\nstrict = True\npython_version = 3.11\nmypy_path = {ROOT}\n"
        "disable_error_code = empty-body\n"
        "[mypy-aiohttp_cors.*,sse_starlette.*,starlette.*]\nignore_missing_imports = True\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", tmp_path / "mypy.ini",
         "--cache-dir", tmp_path / "cache", "--no-error-summary", "--show-error-codes",
         *sorted(modules.iterdir())],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    report = []
    for line in result.stdout.splitlines():
        found = re.match(r".*?(doc_\w+\.py):(\d+):(.*)$", line)
        if found and found[1] in where:
            block = where[found[1]]
            report.append(f"{block.where} (fragment line {found[2]}):{found[3]}")
        else:
            report.append(line)
    assert result.returncode == 0, "mypy --strict on the docs' fragments:\n" + "\n".join(
        [*report, result.stderr]
    )


# -- the README ------------------------------------------------------------------------


def test_the_readme_is_one_screen_and_opens_with_the_setup_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    first = blocks_of(README)[0]
    commands = [line.split("#")[0].strip() for line in first.code.splitlines()]
    assert commands == ["./scripts/demo", "./scripts/test"], first.code
    prose = [line for line in lines[: first.line - 1] if line.strip() and "<!--" not in line]
    assert prose == ["# aiohttp-crossws-sse"], f"the README opens with {prose} before them"


def test_the_readme_links_reach_files_of_the_repository() -> None:
    """The README links to the docs' Markdown sources (no hosted site): each
    relative link names a file that exists, and an anchor one of its headings."""
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    relative = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(relative) >= 10, relative
    for link in relative:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README.md links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
            slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
            assert anchor in slugs, f"README.md links to {link}: no such heading"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_the_readme_setup_commands_work() -> None:
    """``./scripts/test`` is what CI runs (.ci/run); ``./scripts/demo`` serves
    the chat demo (here on a free port instead of 8080)."""
    demo, test = (line.split()[0] for line in doc_block("readme-setup").splitlines())
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(test)}\b", ci, re.M), ".ci/run does not run " + test
    port = free_port()
    log = (ROOT / "artifacts").resolve()
    log.mkdir(exist_ok=True)
    with (log / "scripts-demo.log").open("w+b") as out:
        proc = await asyncio.create_subprocess_exec(
            ROOT / demo, "--port", str(port), cwd=ROOT, stdout=out, stderr=out,
            stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as http:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 120  # a first run installs into .venv
                while True:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/") as response:
                            page = await response.text()
                            break
                    except aiohttp.ClientConnectionError:
                        out.seek(0)
                        assert proc.returncode is None, out.read().decode(errors="replace")
                        assert loop.time() < deadline, "the demo does not listen"
                        await asyncio.sleep(0.2)
                assert response.status == 200 and "EventSource" in page, page
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), WAIT)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


# -- the site --------------------------------------------------------------------------

NO_INDEX = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|dns error|failed to fetch",
    re.I,
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built strictly by ./scripts/docs into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    built = subprocess.run(
        [ROOT / "scripts" / "docs", "--quiet", "--site-dir", out],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        ci = os.environ.get("CI") == "true"
        if not ci and NO_INDEX.search(built.stdout):
            pytest.skip("./scripts/docs: the package index is unreachable (CI=true fails)")
        pytest.fail(f"./scripts/docs failed (exit {built.returncode}):\n{built.stdout}")
    assert (out / "index.html").is_file(), sorted(p.name for p in out.iterdir())
    return out


class _Refs(html.parser.HTMLParser):
    """What a page loads: script sources, link hrefs (styles, icons, fonts)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("script", "img", "iframe", "source") and values.get("src"):
            self.loads.append(f"<{tag} src={values['src']}>")
        if tag == "link" and values.get("href"):
            self.loads.append(f"<link rel={values.get('rel')} href={values['href']}>")


def test_the_site_loads_nothing_from_outside(site: Path) -> None:
    remote = re.compile(r"^(https?:)?//", re.I)
    outside = []
    for page in sorted(site.rglob("*.html")):
        refs = _Refs()
        refs.feed(page.read_text(encoding="utf-8"))
        for load in refs.loads:
            target = load.split("=", 2)[-1].rstrip(">")
            if remote.match(target):
                outside.append(f"{page.relative_to(site)}: {load}")
    for sheet in sorted(site.rglob("*.css")):
        text = sheet.read_text(encoding="utf-8", errors="replace")
        for url in re.findall(r"@import\s+(?:url\()?['\"]?([^'\")\s]+)", text):
            if remote.match(url):
                outside.append(f"{sheet.relative_to(site)}: @import {url}")
        for url in re.findall(r"url\(['\"]?((?:https?:)?//[^'\")]+)", text):
            outside.append(f"{sheet.relative_to(site)}: url({url})")
    assert not outside, "the site loads from outside (no web fonts, no CDN):\n" + "\n".join(outside)


PUBLIC_MODULES = (
    "aiohttp_crossws_sse",
    "aiohttp_crossws_sse.sync",
    "aiohttp_crossws_sse.client",
    "aiohttp_crossws_sse.testing",
    "aiohttp_crossws_sse.prometheus",
)


def test_the_api_reference_covers_every_public_name(site: Path) -> None:
    ids: set[str] = set()
    for page in (site / "api").glob("*.html"):
        ids.update(re.findall(r'\bid="([\w.]+)"', page.read_text(encoding="utf-8")))
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if f"{module_name}.{name}" not in ids:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"the API reference has no entry for {missing}"


@contextlib.asynccontextmanager
async def serve(site: Path) -> AsyncIterator[str]:
    """The built site over loopback, as a static server serves it."""

    async def front(request: web.Request) -> web.FileResponse:
        return web.FileResponse(site / "index.html")

    app = web.Application()
    app.router.add_get("/", front)
    app.router.add_static("/", site)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


# In the page: every element id, and every link's resolved href.
READ_PAGE = """() => ({
  ids: Array.from(document.querySelectorAll("[id]"), (e) => e.id),
  names: Array.from(document.querySelectorAll("a[name]"), (e) => e.name),
  hrefs: Array.from(document.querySelectorAll("a[href]"), (a) => a.href),
  h1: (document.querySelector("article h1") || {}).textContent || "",
})"""


@pytest.mark.browser
async def test_the_site_in_chromium(site: Path, chromium: Browser) -> None:
    """The front page and its navigation work, every internal link of every
    page reaches a page that exists (its anchor included), and nothing is
    requested from outside loopback."""
    async with serve(site) as base:
        context = await chromium.new_context()
        outside: list[str] = []

        async def only_loopback(route: Any) -> None:
            if urlsplit(route.request.url).hostname == "127.0.0.1":
                await route.continue_()
            else:
                outside.append(route.request.url)
                await route.abort()

        await context.route("**/*", only_loopback)
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            response = await page.goto(base, timeout=WAIT * 1000)
            assert response is not None and response.status == 200
            assert await page.title() == "aiohttp-crossws-sse"
            await page.screenshot(
                path=os.path.join(browser_conftest.artifacts_dir(), "docs-front-page.png"),
                full_page=False,
            )
            # the navigation: the front page's own link to each guide
            nav = page.locator("nav.md-nav--primary a.md-nav__link[href]")
            titles = [t.strip() for t in await nav.all_inner_texts() if t.strip()]
            for title in ("Getting started", "Authentication", "Deployment", "Troubleshooting"):
                assert title in titles, titles
            await nav.filter(has_text="Getting started").first.click()
            await page.wait_for_url("**/getting-started.html", timeout=WAIT * 1000)
            title = await page.locator("article h1").inner_text()
            assert title.strip().rstrip("¶").strip() == "Getting started"

            # the crawl: every internal link of every page reachable from the front page
            seen: dict[str, dict[str, Any]] = {}
            queue = [base]
            while queue:
                url = queue.pop()
                if url in seen:
                    continue
                answer = await page.goto(url, timeout=WAIT * 1000)
                status = answer.status if answer is not None else 0
                content_type = answer.headers.get("content-type", "") if answer else ""
                if status != 200 or "text/html" not in content_type:
                    seen[url] = {"status": status, "ids": set(), "hrefs": []}
                    continue
                found = await page.evaluate(READ_PAGE)
                seen[url] = {
                    "status": status,
                    "ids": set(found["ids"]) | set(found["names"]),
                    "hrefs": found["hrefs"],
                    "h1": found["h1"],
                }
                for href in found["hrefs"]:
                    target, _ = urldefrag(href)
                    if target.startswith(base) and target not in seen:
                        queue.append(target)
        finally:
            await context.close()

    broken = []
    pages = [url for url, info in seen.items() if info["ids"]]
    for url in pages:
        for href in seen[url]["hrefs"]:
            target, anchor = urldefrag(href)
            if not target.startswith(base):
                continue
            info = seen.get(target)
            if info is None or info["status"] != 200:
                broken.append(f"{url}: {href} ({info and info['status']})")
            elif anchor and anchor not in info["ids"]:
                broken.append(f"{url}: {href} (no element with id {anchor!r})")
    assert not broken, "broken internal links:\n" + "\n".join(sorted(set(broken)))
    assert len(pages) >= 20, f"the crawl reached only {sorted(pages)}"
    for url in pages:
        assert seen[url]["h1"].strip() or url.endswith("404.html"), f"{url} has no title"
    assert not errors, f"script errors: {errors}"
    assert not outside, f"requests that left loopback: {outside}"


# -- the guides' code, run ---------------------------------------------------------------


def run_block(name: str, **names: Any) -> dict[str, Any]:
    """Execute the block ``name`` as a module; its globals."""
    namespace: dict[str, Any] = {"__name__": f"doc_{name.replace('-', '_')}", **names}
    exec(compile(doc_block(name), f"<docs: {name}>", "exec"), namespace)
    return namespace


def test_the_postgres_table_is_the_one_postgres_sync_creates() -> None:
    def normal(sql: str) -> str:
        return re.sub(r"\(\s+|\s+\)", lambda m: m[0].strip(), " ".join(sql.split()))

    shown = normal(doc_block("postgres-table")).rstrip(";")
    source = (ROOT / "aiohttp_crossws_sse" / "sync" / "postgres.py").read_text(encoding="utf-8")
    found = re.search(r'f"(CREATE UNLOGGED TABLE \{self\.table\} [^"]*)"\s*"([^"]*)"', source)
    assert found, "sync/postgres.py no longer creates its table as this test reads it"
    made = normal(found[1] + found[2])
    from aiohttp_crossws_sse.sync.postgres import PostgresSync

    table = PostgresSync.__init__.__kwdefaults__["table"]
    assert shown == made.replace("{self.table}", table)


async def test_header_tokens_guard_the_stream_and_its_posts(aiohttp_server: Any) -> None:
    from aiohttp_crossws_sse.client import SSEClientError, connect

    sse = run_block("auth-bearer")["sse"]
    app = web.Application()
    sse.setup(app, "/sse")
    server = await aiohttp_server(app)
    url = str(server.make_url("/sse"))
    good = {"Authorization": "Bearer t-alice"}
    async with connect(url, headers=good, timeout=WAIT) as client:
        assert await client.send("hi") == 200
        event = await client.next_event(timeout=WAIT)
        assert event.data == "alice said hi"
        async with (
            aiohttp.ClientSession() as http,  # the POST without the header
            http.post(url, data="x", headers={"x-crossws-id": client.id}) as answer,
        ):
            assert answer.status == 401
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    for headers in ({}, {"Authorization": "Bearer t-bob"}, {"Authorization": "Basic t-alice"}):
        with pytest.raises(SSEClientError) as refused:
            async with connect(url, headers=headers, timeout=WAIT):
                pytest.fail("the stream must be refused")
        assert refused.value.status == 401


def session_app() -> web.Application:
    create_app = run_block("auth-session")["create_app"]
    app: web.Application = create_app(os.urandom(32), secure=False)
    return app


# The plain-browser snippet of docs/bidirectional.md, in a page of its own.
async def bidir_page(request: web.Request) -> web.Response:
    snippet = doc_block("browser-bidir")
    return web.Response(
        text=f"<!doctype html>\n<title>bidir</title>\n{snippet}", content_type="text/html"
    )


# aiohttp-session 2.12 keys the request with a str, which aiohttp 3.14 warns about
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
@pytest.mark.browser
async def test_cookie_sessions_guard_the_stream_and_its_posts_in_chromium(
    aiohttp_server: Any, chromium: Browser
) -> None:
    """docs/authentication.md's aiohttp-session app, read and written by a
    browser with docs/bidirectional.md's snippet: the POSTs carry the cookie."""
    from aiohttp_crossws_sse.client import SSEClientError, connect

    app = session_app()
    app.router.add_get("/", bidir_page)
    server = await aiohttp_server(app)
    base = str(server.make_url("/"))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob_http:
        # bob, logged in from Python, reads the chat
        async with bob_http.post(base + "login", data={"user": "bob", "password": "secret"}) as r:
            assert r.status == 204
        bob = await connect(base + "sse", session=bob_http, timeout=WAIT)
        async with bob:
            context = await chromium.new_context()
            try:
                login = await context.request.post(
                    base + "login", form={"user": "alice", "password": "secret"}
                )
                assert login.status == 204
                page = await context.new_page()
                await page.goto(base)
                await page.wait_for_function("() => typeof id === 'string'", timeout=WAIT * 1000)
                status = await page.evaluate(
                    "() => send('hello from the page').then(r => r.status)"
                )
                assert status == 200
                event = await bob.next_event(timeout=WAIT)
                assert event.data == "alice: hello from the page"
                peer_id = await page.evaluate("() => id")
            finally:
                await context.close()
    # without the cookie: no stream, and a POST with a real peer id is refused
    with pytest.raises(SSEClientError) as refused:
        async with connect(base + "sse", timeout=WAIT):
            pytest.fail("the stream must be refused")
    assert refused.value.status == 401
    async with aiohttp.ClientSession() as http:
        async with http.post(base + "sse", data="x", headers={"x-crossws-id": peer_id}) as answer:
            assert answer.status == 401
        # a wrong password gets no session
        async with http.post(base + "login", data={"user": "eve", "password": "guess"}) as r:
            assert r.status == 403


# -- docs/troubleshooting.md quotes the package ----------------------------------------


def package_messages() -> list[re.Pattern[str]]:
    """Every string the package's code holds, as a pattern: a placeholder
    (``{...}`` of an f-string, ``%s``-style) matches anything."""
    patterns = []
    for path in (ROOT / "aiohttp_crossws_sse").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                parts = [
                    re.escape(value.value)
                    if isinstance(value, ast.Constant) and isinstance(value.value, str)
                    else ".*"
                    for value in node.values
                ]
                patterns.append("".join(parts))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                literal = re.split(r"(%[-+ #0]*\d*(?:\.\d+)?[sdrfg]|\{[^{}]*\})", node.value)
                patterns.append(
                    "".join(".*" if i % 2 else re.escape(part) for i, part in enumerate(literal))
                )
    return [re.compile(p, re.S) for p in patterns if len(re.sub(r"\\.|\.\*", "x", p)) >= 6]


def test_troubleshooting_quotes_the_package_messages() -> None:
    """Each message quoted in the tables after "Symptoms" (the first code
    span of its row that reads as a message, with ``…`` for what varies)
    is a message of the package."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    text = text[text.index("## HTTP answers") :]
    messages = package_messages()
    quoted: list[str] = []
    for line in text.splitlines():
        if not line.startswith("| ") or line.startswith("| ---"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        cell = cells[1] if cells[0] in ("ERROR", "WARNING", "INFO", "ERROR / WARNING") else cells[0]
        quoted += [span for span in re.findall(r"`([^`]+)`", cell) if " " in span or "…" in span]
    assert len(quoted) > 60, quoted
    unknown = []
    for quote in quoted:
        for fragment in (f.strip() for f in quote.split("…")):
            if len(fragment) < 4 or fragment in (",", ":", ";"):
                continue
            if not any(pattern.search(fragment) or fragment in pattern.pattern.replace("\\", "")
                       for pattern in messages):  # fmt: skip
                unknown.append(f"{fragment!r} (of `{quote}`)")
    assert not unknown, "quoted in docs/troubleshooting.md, not in the package:\n" + "\n".join(
        unknown
    )
