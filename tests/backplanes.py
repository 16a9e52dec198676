"""Real Redis and PostgreSQL servers, and cluster nodes, for the backplane tests.

The servers run from Debian's packages (``redis-server``; ``postgresql``'s
``initdb``/``pg_ctl``) in a temporary directory, reachable over a unix socket
only. Under ``CI=true`` a missing server binary fails the test; elsewhere it
skips with the reason. Every process started here is stopped by its PID.

Test modules import the fixtures they use (``redis_server_fixture`` provides
the fixture ``redis_server``, and so on) and the helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest

from aiohttp_crossws_sse.client import EventSourceClient, connect

NODE_APP = Path(__file__).parent / "apps" / "cluster_node.py"
# Small timings so that outages are noticed and healed quickly in tests.
FAST_OPTIONS: dict[str, Any] = {
    "heartbeat": 2.0,
    "max_reconnect_delay": 0.5,
    "report_interval": 0.5,
}


def missing(what: str) -> None:
    """A server binary is not installed: fail under CI, else skip."""
    message = f"{what} is not installed (apt-get install redis-server postgresql)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI needs it")
    pytest.skip(message)


def _read_tail(log: IO[bytes], tail: int = 2000) -> str:
    log.seek(0, os.SEEK_END)
    size = log.tell()
    log.seek(max(0, size - tail))
    return log.read().decode(errors="replace")


# -- Redis -----------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a unix socket in a temporary directory, no persistence."""

    def __init__(self, binary: str, password: str | None = None) -> None:
        self.binary = binary
        self.password = password  # requirepass; the url then carries it
        self.dir = tempfile.mkdtemp(prefix="crossws-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.url = (
            f"unix://{self.socket}" if password is None else f"unix://:{password}@{self.socket}"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = open(os.path.join(self.dir, "redis.log"), "w+b")  # noqa: SIM115

    def start(self) -> None:
        cmd = [
            self.binary,
            "--port", "0",
            "--unixsocket", self.socket,
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir,
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {_read_tail(self.log)}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(self.socket)
                if self.password is not None:
                    secret = self.password.encode()
                    s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                    if not s.recv(16).startswith(b"+OK"):
                        return False
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, by PID: the way a crash looks to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    assert binary is not None
    return binary


@contextlib.contextmanager
def running_redis(password: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), password)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@pytest.fixture(name="own_redis_server")
def own_redis_server_fixture() -> Iterator[RedisServer]:
    """A Redis of this test alone (for tests that kill it)."""
    with running_redis() as server:
        yield server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisClusterServers:
    """A Redis Cluster of ``size`` primaries (no replicas): Debian's
    ``redis-server --cluster-enabled yes`` on loopback ports, each in a
    directory of its own (its ``nodes.conf`` survives a kill, so that a
    restarted node rejoins with its slots), no persistence, joined with
    ``redis-cli --cluster create``. A node may be killed and started again;
    the others keep serving their slots (``cluster-require-full-coverage no``).
    """

    def __init__(self, binary: str, cli: str, size: int = 3) -> None:
        self.binary = binary
        self.cli = cli
        self.dir = tempfile.mkdtemp(prefix="crossws-redis-cluster-")
        self.ports = [free_port() for _ in range(size)]
        self.bus_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        self.logs = [open(os.path.join(self.dir, f"node{i}.log"), "w+b") for i in range(size)]  # noqa: SIM115
        #: any node: RedisSync reads the cluster's map from it
        self.url = f"redis://127.0.0.1:{self.ports[0]}"
        self.urls = [f"redis://127.0.0.1:{port}" for port in self.ports]

    def start_node(self, i: int) -> None:
        node_dir = os.path.join(self.dir, f"node{i}")
        os.makedirs(node_dir, exist_ok=True)
        cmd = [
            self.binary,
            "--port", str(self.ports[i]),
            "--cluster-port", str(self.bus_ports[i]),
            "--bind", "127.0.0.1",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "1000",
            "--cluster-require-full-coverage", "no",
            "--save", "",
            "--appendonly", "no",
            "--dir", node_dir,
            "--daemonize", "no",
        ]  # fmt: skip
        self.procs[i] = subprocess.Popen(cmd, stdout=self.logs[i], stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while self.command(i, "PING") != "PONG":
            proc = self.procs[i]
            if proc is None or proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {_read_tail(self.logs[i])}")
            time.sleep(0.02)

    def start(self) -> None:
        for i in range(len(self.ports)):
            self.start_node(i)
        nodes = [f"127.0.0.1:{port}" for port in self.ports]
        result = subprocess.run(
            [self.cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        if result.returncode:
            raise RuntimeError(f"redis-cli --cluster create failed: {result.stdout.decode()}")
        self.wait_ok()

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every node says the cluster is ok and knows every other."""
        deadline = time.monotonic() + timeout
        while True:
            infos = [self.command(i, "CLUSTER", "INFO") for i in range(len(self.ports))]
            if all(
                "cluster_state:ok" in info
                and f"cluster_known_nodes:{len(self.ports)}" in info
                and "cluster_slots_ok:16384" in info
                for info in infos
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not become ok: {infos}")
            time.sleep(0.05)

    def command(self, i: int, *args: str) -> str:
        """``redis-cli`` against node ``i``: its answer (empty when it is down)."""
        result = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(self.ports[i]), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        return result.stdout.decode().strip()

    def node_of(self, key: str) -> int:
        """The index of the node that serves ``key``'s slot."""
        slot = int(self.command(0, "CLUSTER", "KEYSLOT", key))
        for i in range(len(self.ports)):
            for line in self.command(i, "CLUSTER", "NODES").splitlines():
                fields = line.split()
                if "myself" in fields[2] and any(
                    ("-" in r and int(r.split("-")[0]) <= slot <= int(r.split("-")[1]))
                    or (r.isdigit() and int(r) == slot)
                    for r in fields[8:]
                ):
                    return i
        raise LookupError(f"no node serves slot {slot}")

    def move_slot(self, key: str, to: int) -> None:
        """Move ``key``'s (empty) slot to node ``to``, as resharding does:
        the old owner unsubscribes its shard channels and answers MOVED."""
        slot = self.command(0, "CLUSTER", "KEYSLOT", key)
        source = self.node_of(key)
        ids = [self.command(i, "CLUSTER", "MYID") for i in range(len(self.ports))]
        self.command(to, "CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        self.command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", ids[to])
        for i in (source, to, *(j for j in range(len(self.ports)) if j not in (source, to))):
            self.command(i, "CLUSTER", "SETSLOT", slot, "NODE", ids[to])
        deadline = time.monotonic() + 30
        while self.node_of(key) != to:
            if time.monotonic() > deadline:
                raise RuntimeError(f"slot {slot} did not move to node {to}")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i``, by PID: the way a crash looks to clients."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.kill(i)
        for log in self.logs:
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_cli_binary() -> str:
    binary = shutil.which("redis-cli")
    if binary is None:
        missing("redis-cli (package redis-tools)")
    assert binary is not None
    return binary


@contextlib.contextmanager
def running_redis_cluster() -> Iterator[RedisClusterServers]:
    servers = RedisClusterServers(redis_binary(), redis_cli_binary())
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture() -> Iterator[RedisClusterServers]:
    with running_redis_cluster() as servers:
        yield servers


@pytest.fixture(name="own_redis_cluster")
def own_redis_cluster_fixture() -> Iterator[RedisClusterServers]:
    """A Redis Cluster of this test alone (for tests that kill a node)."""
    with running_redis_cluster() as servers:
        yield servers


class LatencyProxy:
    """A TCP proxy on 127.0.0.1 in front of a unix socket (a Redis "``delay``
    seconds away"): every chunk is forwarded ``delay`` seconds after it was
    read, in order, each way. ``cut()`` drops every connection and refuses
    new ones (a network partition) until ``restore()``. Use ``async with``:
    no task outlives it."""

    def __init__(self, target: str, delay: float) -> None:
        self.target = target
        self.delay = delay
        self.url = ""
        self.port = 0
        self.connections = 0  # accepted so far
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False

    async def __aenter__(self) -> LatencyProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        self._cut = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self._cut = False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        self._spawn(self._pipe(reader, up_writer))
        self._spawn(self._pipe(up_reader, writer))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._spawn(self._deliver(queue, dst))
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + self.delay, data))
        except OSError:
            pass
        queue.put_nowait((loop.time() + self.delay, b""))  # then close both ends

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.transport.abort()
            self._writers.discard(dst)


@contextlib.asynccontextmanager
async def slow_pair(
    backend: str,
    url: str,
    slow_url: str,
    channel: str,
    adapter: dict[str, Any] | None = None,
    **options: Any,
) -> AsyncIterator[tuple[Node, Node]]:
    """Two instances in their own processes: ``a`` reaches the backplane at
    ``url``, ``b`` at ``slow_url`` (a ``LatencyProxy`` run by this loop, so
    the processes start in threads while the loop serves the proxy)."""
    a = await asyncio.to_thread(Node, backend, url, channel, adapter, **options)
    try:
        b = await asyncio.to_thread(Node, backend, slow_url, channel, adapter, **options)
        try:
            yield a, b
        finally:
            await asyncio.to_thread(b.stop)
    finally:
        await asyncio.to_thread(a.stop)


# -- PostgreSQL ------------------------------------------------------------------------


def postgres_bindir() -> str:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if candidates:
        return os.path.dirname(candidates[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        missing("PostgreSQL (initdb, pg_ctl)")
    assert initdb is not None
    return os.path.dirname(initdb)


class PostgresServer:
    """A PostgreSQL cluster made by ``initdb`` in a temporary directory,
    listening on a unix socket only (trust authentication, role ``postgres``).
    As root, the server runs as the ``postgres`` system user."""

    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="crossws-pg-")
        self.data = os.path.join(self.dir, "data")
        self.logfile = os.path.join(self.dir, "server.log")
        self.dsn = f"postgresql://postgres@/postgres?host={self.dir}"
        self.user: str | None = None
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                missing("the postgres system user (package postgresql)")
            self.user = "postgres"
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [os.path.join(self.bindir, args[0]), *args[1:]],
            user=self.user,
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=60,
        )
        if result.returncode:
            log = ""
            if os.path.exists(self.logfile):
                with open(self.logfile, "rb") as f:
                    log = _read_tail(f)
            raise RuntimeError(f"{' '.join(args)} failed: {result.stdout.decode()}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")  # fmt: skip

    def start(self) -> None:
        options = f"-k {self.dir} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.logfile, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(postgres_bindir())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session", name="postgres_server")
def postgres_server_fixture() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(name="own_postgres_server")
def own_postgres_server_fixture() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test alone (for tests that stop it)."""
    with running_postgres() as server:
        yield server


# -- cluster nodes -------------------------------------------------------------------


class Node:
    """``tests/apps/cluster_node.py`` in its own process: one instance of a cluster."""

    def __init__(
        self,
        backend: str,
        url: str,
        channel: str,
        adapter: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        config = {
            "backend": backend,
            "url": url,
            "channel": channel,
            "options": options,
            "adapter": adapter or {},
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, str(NODE_APP), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            line = self.proc.stdout.readline() if sel.select(30) else b""
        if not line.startswith(b"port="):
            output = self.output()
            self.stop()
            raise RuntimeError(f"cluster node did not start: {line!r} {output}")
        self.url = f"http://127.0.0.1:{int(line[5:])}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return _read_tail(self.log, 4000)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()

    # -- over HTTP -----------------------------------------------------------------

    def stream(self, session: aiohttp.ClientSession, topics: str = "chat", ns: str = "",
               last_id: str | None = None, recovered: bool = False) -> Any:  # fmt: skip
        """A stream subscribed to ``topics``; with ``last_id``, resuming from it
        (``recovered``: the node then sends ``peer.recovered`` as an event
        ``recovered`` once the replay is done)."""
        query = f"?topics={topics}" + (f"&ns={ns}" if ns else "")
        query += "&recovered=1" if recovered else ""
        return connect(
            self.url + "/sse" + query, session=session, timeout=10, last_event_id=last_id
        )

    async def stats(self, session: aiohttp.ClientSession) -> dict[str, int]:
        """The node's ``sse.stats()``."""
        async with session.get(self.url + "/stats") as response:
            result: dict[str, int] = await response.json()
            return result

    async def publish(self, session: aiohttp.ClientSession, topic: str, data: str = "",
                      **params: Any) -> None:  # fmt: skip
        query = {"topic": topic, "data": data, **{k: str(v) for k, v in params.items()}}
        async with session.get(self.url + "/publish", params=query) as response:
            assert response.status == 200, await response.text()

    async def publish_awaited(self, session: aiohttp.ClientSession, topic: str, data: str = "",
                              **params: Any) -> list[str | None]:  # fmt: skip
        """Publish (``sse.publish``) and await it; the awaited ids. Raises
        ``AssertionError`` with the ``BackplaneError``'s message on a 503."""
        query = {"topic": topic, "data": data, "wait": "1",
                 **{k: str(v) for k, v in params.items()}}  # fmt: skip
        async with session.get(self.url + "/publish", params=query) as response:
            assert response.status == 200, f"{response.status}: {await response.text()}"
            ids: list[str | None] = (await response.json())["ids"]
            return ids

    async def publish_batch(self, session: aiohttp.ClientSession,
                            items: Sequence[Mapping[str, str | None]]) -> None:  # fmt: skip
        """``sse.publish`` each of ``items`` (``topic``, ``data``, optional
        ``event`` and ``ns``), all in one event-loop iteration."""
        async with session.post(self.url + "/batch", json=items) as response:
            assert response.status == 200, await response.text()

    async def errors(self, session: aiohttp.ClientSession) -> list[str]:
        async with session.get(self.url + "/errors") as response:
            result: list[str] = await response.json()
            return result

    async def health(self, session: aiohttp.ClientSession) -> dict[str, int]:
        async with session.get(self.url + "/health") as response:
            result: dict[str, int] = await response.json()
            return result


@contextlib.contextmanager
def node_pair(
    backend: str,
    url: str,
    channel: str = "main",
    adapter: dict[str, Any] | None = None,
    **options: Any,
) -> Iterator[tuple[Node, Node]]:
    """Two instances, each its own process and aiohttp server, sharing one backplane."""
    a = Node(backend, url, channel, adapter, **options)
    try:
        b = Node(backend, url, channel, adapter, **options)
    except BaseException:
        a.stop()
        raise
    try:
        yield a, b
    finally:
        for node in (a, b):
            node.stop()


async def opened(client: EventSourceClient) -> EventSourceClient:
    """Connect and wait for the ``welcome`` event (subscriptions are in place)."""
    await client.connected()
    assert (await client.next_event(10)).data == "welcome"
    return client


async def data_of(client: EventSourceClient, n: int, timeout: float = 10) -> list[str]:
    return [(await client.next_event(timeout)).data for _ in range(n)]


async def until(condition: Any, timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll an async condition until it is true; a bounded wait, not a timing."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def binary_sample() -> tuple[str, str]:
    """Bytes (as latin-1 text, for the node's ``binary`` flag) and the data URL
    every subscriber must receive for them."""
    import base64

    raw = bytes(range(256)) * 3 + b"\x00\r\n\xff"
    return raw.decode("latin-1"), (
        "data:application/octet-stream;base64," + base64.b64encode(raw).decode()
    )


# -- scenarios both backplanes pass ------------------------------------------------------


async def check_adapter_publish(a: Node, b: Node, session: aiohttp.ClientSession) -> None:
    """``adapter.publish`` on B reaches A once, with its event type; and back."""
    async with a.stream(session, "adapter") as on_a, b.stream(session, "adapter") as on_b:
        await opened(on_a)
        await opened(on_b)
        await b.publish(session, "adapter", "from b", event="note")
        got = await on_a.next_event(10)
        assert (got.data, got.event) == ("from b", "note")
        assert (await on_b.next_event(10)).data == "from b"  # local, once
        await a.publish(session, "adapter", "from a")
        assert (await on_b.next_event(10)).data == "from a"
        assert (await on_a.next_event(10)).data == "from a"  # not twice: the echo is dropped
        await b.publish(session, "adapter", "marker")
        assert await data_of(on_a, 1) == ["marker"]
        assert await data_of(on_b, 1) == ["marker"]


async def check_peer_publish(a: Node, b: Node, session: aiohttp.ClientSession) -> None:
    """``peer.publish`` on B reaches A and B's other peers, never the sender."""
    async with (
        a.stream(session, "peer") as on_a,
        b.stream(session, "peer") as sender,
        b.stream(session, "peer") as other,
    ):
        for client in (on_a, sender, other):
            await opened(client)
        await sender.send({"topic": "peer", "data": "hello from a peer"})
        assert await data_of(on_a, 1) == ["hello from a peer"]
        assert await data_of(other, 1) == ["hello from a peer"]
        await a.publish(session, "peer", "marker")
        for client in (on_a, sender, other):
            assert await data_of(client, 1) == ["marker"]


async def check_namespaces(a: Node, b: Node, session: aiohttp.ClientSession) -> None:
    """A publish for one namespace reaches only that namespace elsewhere; ``None`` all."""
    async with (
        a.stream(session, "ns", ns="room1") as room1,
        a.stream(session, "ns", ns="room2") as room2,
        a.stream(session, "ns") as default,
    ):
        for client in (room1, room2, default):
            await opened(client)
        await b.publish(session, "ns", "room1 only", ns="room1")
        assert await data_of(room1, 1) == ["room1 only"]
        await b.publish(session, "ns", "everyone")
        for client in (room1, room2, default):
            assert await data_of(client, 1) == ["everyone"]  # room2 never got "room1 only"


async def check_order(a: Node, b: Node, session: aiohttp.ClientSession) -> None:
    """1,000 publishes arrive in order, whether made in one loop iteration or
    one per iteration; none twice."""
    async with a.stream(session, "order") as on_a, b.stream(session, "order") as on_b:
        await opened(on_a)
        await opened(on_b)
        await b.publish(session, "order", "burst", n=1000)
        assert await data_of(on_a, 1000) == [f"burst{i}" for i in range(1000)]
        await b.publish(session, "order", "spread", n=1000, spread=1)
        assert await data_of(on_a, 1000) == [f"spread{i}" for i in range(1000)]
        await a.publish(session, "order", "marker")
        assert await data_of(on_a, 1) == ["marker"]
        assert await data_of(on_b, 2001) == [
            *(f"burst{i}" for i in range(1000)),
            *(f"spread{i}" for i in range(1000)),
            "marker",
        ]


async def check_binary(a: Node, b: Node, session: aiohttp.ClientSession) -> None:
    """Bytes published on B (adapter and peer) arrive on A as the same data URL."""
    raw, expected = binary_sample()
    async with a.stream(session, "bin") as on_a, b.stream(session, "bin") as sender:
        await opened(on_a)
        await opened(sender)
        await b.publish(session, "bin", raw, binary=1)
        assert await data_of(on_a, 1) == [expected]
        await sender.send({"topic": "bin", "data": raw, "binary": True})
        assert await data_of(on_a, 1) == [expected]


async def check_isolation(a: Node, b: Node, other: Node, session: aiohttp.ClientSession) -> None:
    """``other`` shares the server but not the channel: neither side sees the other."""
    async with a.stream(session, "iso") as on_a, other.stream(session, "iso") as on_other:
        await opened(on_a)
        await opened(on_other)
        await b.publish(session, "iso", "main channel")
        assert await data_of(on_a, 1) == ["main channel"]  # relaying works on main
        await other.publish(session, "iso", "other channel")
        assert await data_of(on_other, 1) == ["other channel"]  # main's never came
        await b.publish(session, "iso", "main again")
        assert await data_of(on_a, 1) == ["main again"]  # other's never came


async def crossed(src: Node, dst: EventSourceClient, session: aiohttp.ClientSession,
                  topic: str, tag: str, timeout: float = 60.0) -> int:  # fmt: skip
    """Publish probes on ``src`` until one reaches ``dst`` (a bounded wait); then
    a final marker, and check that what ``dst`` got is probes in order, then
    the marker. Returns the number of probes sent."""
    deadline = asyncio.get_running_loop().time() + timeout
    sent = 0
    first: str | None = None
    while first is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{tag}: no publish crossed over within {timeout} s")
        await src.publish(session, topic, f"{tag}{sent}")
        sent += 1
        with contextlib.suppress(TimeoutError):
            first = (await dst.next_event(0.3)).data
    await src.publish(session, topic, f"{tag}-end")
    rest = [first]
    while rest[-1] != f"{tag}-end":
        rest.append((await dst.next_event(10)).data)
    probes = [int(x[len(tag) :]) for x in rest[:-1]]
    assert all(x.startswith(tag) for x in rest), rest
    assert probes == sorted(set(probes)), f"{tag}: out of order or twice: {rest}"
    return sent


async def check_outage(
    a: Node, b: Node, session: aiohttp.ClientSession, kill: Any, restart: Any, kind: str
) -> None:
    """The backplane dies while both serve: local delivery goes on, the outage
    is reported on both (never raised into a handler), and relaying resumes by
    itself once the server is back."""
    async with a.stream(session, "out") as on_a, b.stream(session, "out") as on_b:
        await opened(on_a)
        await opened(on_b)
        await b.publish(session, "out", "before")
        assert await data_of(on_a, 1) == ["before"]
        assert await data_of(on_b, 1) == ["before"]

        kill()
        for node, client in ((a, on_a), (b, on_b)):
            await node.publish(session, "out", "during")  # answers 200: nothing raised
            assert await data_of(client, 1) == ["during"]  # local peers still served
        for node in (a, b):

            async def saw_outage(node: Node = node) -> bool:
                errors = " ".join(await node.errors(session))
                return f"lost the connection to {kind}" in errors and "not relayed" in errors

            await until(saw_outage, timeout=30)

        restart()
        # each way, with each side getting its own probes locally, once each, in order
        sent = await crossed(b, on_a, session, "out", "b2a")
        assert await data_of(on_b, sent + 1) == [*(f"b2a{i}" for i in range(sent)), "b2a-end"]
        sent = await crossed(a, on_b, session, "out", "a2b")
        assert await data_of(on_a, sent + 1) == [*(f"a2b{i}" for i in range(sent)), "a2b-end"]
    for node in (a, b):
        assert node.alive(), node.output()
        assert (await node.health(session))["handler_errors"] == 0
