"""The public types catch mistakes: a program using the public API type-checks
under ``mypy --strict``, and each listed mistake makes the same program fail.

mypy runs in a subprocess on files written here (the installed package and
its ``py.typed`` are what it sees), once for the good program and once with
every mistake, each mistake on a line of its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
from typing import Any

from aiohttp import web

from aiohttp_crossws_sse import (
    BackplaneError,
    CloseDetails,
    HooksDict,
    Message,
    Peer,
    SSEError,
    UpgradeAccept,
    define_hooks,
    get_adapter,
    sse_adapter,
)


def upgrade(request: web.Request) -> UpgradeAccept | None:
    return {"namespace": "/rooms", "context": {"user": "ann"}, "headers": {"x-a": "1"}}


def open_(peer: Peer) -> None:
    peer.subscribe("chat")


async def message(peer: Peer, msg: Message) -> None:
    event_id: str | None = await peer.publish("chat", msg.text())
    del event_id


def close(peer: Peer, details: CloseDetails) -> None:
    pass


def error(peer: Peer | None, err: SSEError) -> None:
    pass


hooks: HooksDict = {"open": open_, "close": close}
sse = sse_adapter(define_hooks(upgrade=upgrade, open=open_, message=message, error=error))
sse2 = sse_adapter({"open": open_, "message": message}, bidir=True)
sse3 = sse_adapter(hooks)


async def post(request: web.Request) -> web.Response:
    try:
        got = await get_adapter(request).publish("chat", await request.text())
    except BackplaneError:
        raise web.HTTPServiceUnavailable() from None
    return web.json_response({"id": got})


def resolve(request: web.Request) -> HooksDict | None:
    return {"open": open_}


sse4 = sse_adapter(resolve=resolve)
sse5 = sse_adapter(
    hooks,
    keepalive=15,
    max_buffer=1 << 20,
    slow_consumer="drop-oldest",
    send_timeout=None,
    max_peers=100,
    history=1000,
    history_max_age=60.0,
    retry=2000,
    refusal="retry",
    retry_after=2,
)
"""

# Each mistake: a line appended to GOOD, and what mypy must say about it.
MISTAKES = {
    "a class instead of hooks": (
        "class MyHooks:\n    pass\nbad = sse_adapter(MyHooks)",
        "arg-type",
    ),
    "a bare function instead of hooks": ("bad = sse_adapter(open_)", "arg-type"),
    "a misspelt hook name in a dict": (
        'bad = sse_adapter({"opne": open_})',
        "arg-type",
    ),
    "a misspelt upgrade-result key": (
        'def up2(request: web.Request) -> UpgradeAccept:\n    return {"namespce": "/x"}',
        "typeddict-unknown-key",
    ),
    "a misspelt option": ("bad = sse_adapter(max_bufer=1024)", "call-arg"),
    "an option of the wrong type": ('bad = sse_adapter(keepalive="15")', "arg-type"),
    "an option value not among the choices": (
        'bad = sse_adapter(slow_consumer="drop")',
        "arg-type",
    ),
    "a hook with the wrong signature": ("bad = define_hooks(open=lambda: None)", "arg-type"),
    "not awaiting is fine, but a publish result is not an id": (
        'wrong: str = sse.publish("chat", "x")',
        "assignment",
    ),
}


def mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    program = tmp_path / "program.py"
    program.write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--show-error-codes",
            str(program),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        # the package as this checkout has it (an editable install's import
        # hook is invisible to mypy)
        env=dict(os.environ, MYPYPATH=str(ROOT)),
        timeout=300,
    )


def test_a_program_using_the_public_api_type_checks(tmp_path: Path) -> None:
    result = mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", list(MISTAKES))
def test_each_mistake_fails_the_type_check(tmp_path: Path, name: str) -> None:
    code, error_code = MISTAKES[name]
    first = GOOD.count("\n") + 1
    result = mypy(tmp_path, GOOD + code + "\n")
    assert result.returncode == 1, result.stdout
    lines = {
        int(m.group(1))
        for m in re.finditer(rf"program\.py:(\d+): error: .*\[{error_code}\]", result.stdout)
    }
    assert any(n >= first for n in lines), (
        f"{name}: no [{error_code}] error on it:\n{result.stdout}"
    )
    assert not any(
        n < first for n in map(int, re.findall(r"program\.py:(\d+): error", result.stdout))
    ), result.stdout
