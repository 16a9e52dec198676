"""Process plumbing shared by the benchmark scripts (not a benchmark itself).

Servers and load clients run as child processes, optionally pinned with
``taskset``; each is stopped by its own PID (SIGTERM, then SIGKILL), never by
name. CPU time and memory come from ``/proc/<pid>/stat`` and ``/proc/<pid>/status``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
SERVERS_DIR = HERE / "servers"
LOAD_CLIENT = HERE / "_loadclient.py"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"

# name -> (file in servers/, label)
SERVERS: dict[str, tuple[str, str]] = {
    "ours": ("ours.py", "aiohttp_crossws_sse (sync publish)"),
    "aiohttp-sse": ("aiohttp_sse_loop.py", "aiohttp-sse, await-send loop"),
    "sse-starlette": ("sse_starlette_queues.py", "sse-starlette + uvicorn, queues"),
}


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the children."""

    def handler(signum: int, frame: object) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def raise_nofile(need: int = 0) -> int:
    """Raise this process's open-file limit to its hard limit (children inherit it).
    Returns the new limit; exits with a message when it is below ``need``."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < need:
        sys.exit(
            f"the open-file limit is {hard}, this run needs about {need}: raise it "
            "(ulimit -Hn, or LimitNOFILE in systemd) or use fewer connections"
        )
    return hard


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def pinning(enabled: bool = True) -> tuple[int | None, list[int | None]]:
    """(server CPU, client CPUs): server on the first CPU, clients on the others,
    when ``taskset`` exists and there are at least 2 CPUs; else no pinning."""
    avail = cpus()
    if not enabled or len(avail) < 2 or shutil.which("taskset") is None:
        return None, [None]
    return avail[0], list(avail[1:])


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    # taskset execs the command, so the child's PID is the program's own
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of the process: the sum of its threads' /proc/<pid>/task/*/schedstat
    (nanoseconds), else utime + stime from /proc/<pid>/stat (clock ticks, 10 ms)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent in tasks (all CPUs) plus hypervisor steal,
    from /proc/stat: subtract the server's and clients' to see other work."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(
            int, f.readline().split()[1:9]
        )
    return (user + nice + system + steal) / CLK_TCK


def status_kib(pid: int, field: str = "VmRSS") -> int:
    """A size from /proc/<pid>/status in KiB (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        match = re.search(field + r":\s+(\d+)", f.read())
    return int(match.group(1)) if match else 0


def read_tail(log: IO[bytes], tail: int) -> str:
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - tail))
    text = log.read().decode(errors="replace")
    log.seek(0, os.SEEK_END)
    return text.strip()


def stop_pid(proc: subprocess.Popen[Any], grace: float = 2.0) -> None:
    """SIGTERM this child by its PID, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Server:
    """One fresh server process (a file in servers/), stopped by its PID."""

    def __init__(self, name: str, cpu: int | None = None, env: dict[str, str] | None = None):
        self.name = name
        self.port = free_port()
        script = SERVERS_DIR / SERVERS[name][0]
        full_env = dict(os.environ, PORT=str(self.port), PYTHONUNBUFFERED="1", **(env or {}))
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            pinned(cpu, [sys.executable, str(script)]),
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        try:
            while True:
                try:
                    http_get(self.port, "/peers", timeout=1)
                    return
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"server {name} did not start: {self.output()}"
                        ) from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peers(self, timeout: float = 5.0) -> int:
        return int(http_get(self.port, "/peers", timeout)[1].strip())

    def wait_peers(self, n: int, timeout: float) -> int:
        """Poll /peers until it reads ``n`` or ``timeout`` passes; returns the last reading."""
        deadline = time.monotonic() + timeout
        while True:
            count = self.peers()
            if count == n or time.monotonic() > deadline:
                return count
            time.sleep(0.02)

    def output(self, tail: int = 800) -> str:
        """The end of what the server printed so far (stdout and stderr)."""
        return read_tail(self.log, tail)

    def stop(self) -> None:
        stop_pid(self.proc)
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class LoadClient:
    """One ``_loadclient.py`` process: JSON lines out, commands (go, close) in."""

    def __init__(self, port: int, cpu: int | None, **options: Any) -> None:
        cmd = [sys.executable, str(LOAD_CLIENT), "--port", str(port)]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        for key, value in options.items():
            cmd += ["--" + key.replace("_", "-"), str(value)]
        self.proc = subprocess.Popen(
            pinned(cpu, cmd),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )
        self.pid = self.proc.pid
        self._sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)

    def read(self, timeout: float) -> dict[str, Any] | None:
        """The next JSON line, or None on timeout or exit."""
        assert self.proc.stdout is not None
        if not self._sel.select(timeout):
            return None
        line = self.proc.stdout.readline()
        if not line:
            return None
        result: dict[str, Any] = json.loads(line)
        return result

    def expect(self, event: str, timeout: float) -> dict[str, Any] | None:
        msg = self.read(timeout)
        if msg is None or msg.get("event") != event:
            return None
        return msg

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def output(self, tail: int = 800) -> str:
        """The end of what the client printed on stderr so far."""
        return read_tail(self.log, tail)

    def stop(self) -> None:
        """Ask it to close its sockets and exit; by PID signal if it does not."""
        if self.proc.poll() is None:
            self.send("close")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_pid(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._sel.close()
        self.log.close()


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive counts."""
    parts = max(1, min(parts, total)) if total else 1
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def table(head: list[str], rows: list[list[str]]) -> str:
    """A plain-text table (also valid Markdown), right-aligned figures."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "| " + " | ".join(out) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2) for i, w in enumerate(widths))
    return "\n".join([line(head), sep + "|", *(line(r) for r in rows)])
