"""Scale-out: what does a backplane cost? Two instances through Redis (and
Postgres) against one instance, the same clients.

For every run: fresh server processes (``servers/cluster_node.py``, pinned to
the first CPU), load-client processes (``_loadclient.py``, on the others)
that open the streams and wait for each one's welcome event, then ``GET
/publish?n=M&size=S`` on instance A: M events of S bytes back to back.

- ``single``: C clients on one instance, no backplane.
- ``cluster``: C/2 clients on A, C/2 on B; A relays through the backplane.

Figures: deliveries/s = C x M / (trigger to last event received); server CPU
us per delivery = the CPU time of *every* instance (A + B) over the run /
deliveries, and its ratio to ``single`` (the goal: at most 1.3x). The
backplane server's own CPU (Redis) is shown apart. A run is valid only if
every client received exactly M events of exactly S bytes (none lost, none
twice); an invalid run is printed as such and the script exits with status 1.

Then latency: C clients split over A and B, plus ``--probes`` latency probes on
each, while A publishes at a rate that offers ``--rate`` deliveries/s (to the
C clients); every event carries its publish time (CLOCK_MONOTONIC); the
probes report publish -> receive p50/p99/max on A (local) and on B (relayed),
and check that their events arrived in publish order, none twice. The probes
connect last (the last peers of each instance's fan-out: B's figure includes
A's whole local fan-out, which happens before the relay leaves);
``--probes-first`` measures the first ones instead. The load clients run
niced, so that the probes read as soon as their data arrives.

With ``--ordered``, the latency run is repeated with ``ordered=True`` (every
instance, A included, delivers A's publishes when they come back from the
backplane), beside the backplane's own round trip (a Redis ``PING``, a
Postgres ``SELECT 1``, from this process): the goal is an ordered p99 within
the unordered p99 plus one round trip plus 2 ms.

Last, the relay cost: no subscribers anywhere, A publishes ``--relay-rate``
events/s one per loop iteration, then the same number in one burst; the CPU
per event of A, of B (what *every* instance pays for every event published
anywhere in the cluster) and of Redis; for Redis once more with
``--passive`` extra subscribed connections (more cluster members), which
gives Redis's cost per member per event. A baseline row publishes the same
way on one instance without a backplane (the publish loop's own cost).

With ``--sharded``, instead: channels per topic against one channel. 4
instances (``--instances``) and 1,000 topics (``--topics``); each instance has
one stream following a quarter of them (topic j on instance j % 4). Publishes
are spread over all the topics, one per loop iteration, ``--shard-rate``
events/s from each of ``--publishers`` more instances of the cluster (publish
i of publisher k on topic (k + i) % 1000): so that the four instances' CPU is
what the cluster's publishes cost them (receiving, deciding, delivering to
their stream), not their own publish loop. Three setups, in interleaved
rounds, with fresh processes: ``RedisSync`` with one channel on one Redis,
``sharded=True`` on the same Redis, and ``sharded=True`` on a Redis Cluster of
3 primaries (``redis-server --cluster-enabled yes``, joined with ``redis-cli
--cluster create``). Figures: each instance's CPU per event published in the
cluster (receiving, deciding, delivering to its stream), the publishers' CPU
per event they published, and the Redis servers' CPU per event (the cluster:
summed over its primaries); ratios per round (the rounds are interleaved, so
a round's setups met the same load on a shared machine), then the median. A
run is valid only if every stream got every event of its topics exactly once,
in each publisher's order. The goal: each instance at most 0.35x its CPU with
one channel.

Examples:
  python benchmarks/cluster.py                       # Redis and Postgres, ~1 min
  python benchmarks/cluster.py --backends redis --rounds 3
  python benchmarks/cluster.py --sharded --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import platform
import pwd
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from _harness import (
    SERVERS,
    LoadClient,
    Server,
    cpu_seconds,
    cpus,
    exit_on_sigterm,
    free_port,
    http_get,
    median,
    pinned,
    pinning,
    raise_nofile,
    split,
    stop_pid,
    table,
)
from fanout import Trigger, versions

SERVERS["cluster-node"] = ("cluster_node.py", "aiohttp_crossws_sse instance")
GOAL = 1.3


# -- backplane servers -------------------------------------------------------------------


class Redis:
    """``redis-server`` on a unix socket in a temporary directory."""

    label = "Redis"

    def __init__(self, cpu: int | None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        sock = os.path.join(self.dir, "redis.sock")
        self.url = f"unix://{sock}"
        cmd = [binary, "--port", "0", "--unixsocket", sock, "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(
            pinned(cpu, cmd), cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(sock)
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        stop_pid(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Postgres:
    """A throwaway PostgreSQL cluster (initdb) on a unix socket; as root it runs
    as the ``postgres`` user."""

    label = "Postgres"

    def __init__(self, cpu: int | None) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        bindir = os.path.dirname(found[-1]) if found else None
        if bindir is None and shutil.which("pg_ctl"):
            bindir = os.path.dirname(shutil.which("pg_ctl") or "")
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.dir = tempfile.mkdtemp(prefix="bench-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self.user = "postgres"
        self.url = f"postgresql://postgres@/postgres?host={self.dir}"
        self._run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-k {self.dir} -c listen_addresses='' -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o", options,
                  "-w", "start", cpu=cpu)  # fmt: skip

    def _run(self, *args: str, cpu: int | None = None) -> None:
        cmd = pinned(cpu, [os.path.join(self.bindir, args[0]), *args[1:]])
        result = subprocess.run(
            cmd, user=self.user, cwd=self.dir, capture_output=True, text=True, timeout=60
        )
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def cpu(self) -> float | None:
        return None  # many processes: not measured

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


Backplane = Redis | Postgres


# -- runs ----------------------------------------------------------------------------------


@dataclass
class Run:
    setup: str  # "single", or the backplane's label
    round: int
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    rate: float = 0.0
    cpu_us: float = 0.0  # A + B per delivery
    cpu_us_each: list[float] = field(default_factory=list)
    backplane_us: float | None = None


SPREAD: list[int | None] = []  # --spread: the CPU of instance B


def start_instances(
    count: int, backplane: Backplane | None, cpu: int | None, ordered: bool = False
) -> list[Server]:
    env = {"SYNC": "", "UVLOOP": os.environ.get("UVLOOP", "1"), "ORDERED": str(int(ordered))}
    if backplane is not None:
        env.update(SYNC=backplane.label.lower(), SYNC_URL=backplane.url, CHANNEL="bench")
    servers: list[Server] = []
    try:
        for i in range(count):
            servers.append(Server("cluster-node", SPREAD[0] if i and SPREAD else cpu, env))
    except BaseException:
        for s in servers:
            s.stop()
        raise
    return servers


def open_clients(
    servers: list[Server], total: int, messages: int, size: int, cpu: int | None, args: Any
) -> tuple[list[LoadClient], list[str]]:
    clients: list[LoadClient] = []
    problems: list[str] = []
    for srv, count in zip(servers, split(total, len(servers)), strict=True):
        clients.append(
            LoadClient(
                srv.port,
                cpu,
                connections=count,
                messages=messages,
                size=size,
                idle_timeout=args.idle_timeout,
                timeout=args.timeout,
            )
        )
    for c in clients:
        ready = c.expect("ready", args.timeout + 10)
        if ready is None:
            problems.append(f"load client did not get ready: {c.output()}")
        elif ready["failed"]:
            problems.append(f"{ready['failed']} streams did not open: {ready['failures']}")
    return clients, problems


def verify(dones: list[dict[str, Any] | None], clients: int, messages: int) -> list[str]:
    if any(d is None for d in dones):
        return ["a load client did not report (crashed or hung)"]
    done = [d for d in dones if d is not None]
    total = {k: sum(d[k] for d in done) for k in ("delivered", "complete", "bad", "extra")}
    problems = []
    if total["delivered"] != clients * messages or total["complete"] != clients:
        problems.append(
            f"delivered {total['delivered']:,} of {clients * messages:,} events; "
            f"{total['complete']} of {clients} clients got all {messages}"
        )
    if total["bad"]:
        problems.append(f"{total['bad']:,} events with data of the wrong size")
    if total["extra"]:
        problems.append(f"{total['extra']:,} events more than published (duplicates)")
    whys = {d["why"] for d in done} - {"complete"}
    if whys:
        problems.append("load client stopped waiting: " + ", ".join(sorted(whys)))
    return problems


def burst(setup: str, rnd: int, backplane: Backplane | None, args: Any) -> Run:
    run = Run(setup, rnd)
    server_cpu, client_cpus = pinning(not args.no_pin)
    alone = setup.endswith(" alone")
    servers = start_instances(1 if backplane is None or alone else 2, backplane, server_cpu)
    clients: list[LoadClient] = []
    try:
        clients, run.problems = open_clients(
            servers, args.clients, args.messages, args.size, client_cpus[0], args
        )
        if run.problems:
            return run
        for srv, count in zip(servers, split(args.clients, len(servers)), strict=True):
            if srv.wait_peers(count, 10) != count:
                run.problems.append(f"instance on port {srv.port} does not have {count} peers")
                return run
        for c in clients:
            c.send("go")
        time.sleep(0.3)  # let every load client take the "go" before the first event
        s0 = [cpu_seconds(s.pid) for s in servers]
        b0 = backplane.cpu() if backplane is not None else None
        trigger = Trigger(servers[0].port, f"/publish?n={args.messages}&size={args.size}", 60)
        trigger.start()
        dones = [c.expect("done", args.timeout + args.idle_timeout + 10) for c in clients]
        s1 = [cpu_seconds(s.pid) for s in servers]
        b1 = backplane.cpu() if backplane is not None else None
        trigger.join(10)
        run.problems = verify(dones, args.clients, args.messages)
        if trigger.status != 200:
            run.problems.append(f"/publish answered {trigger.status}")
        if run.problems:
            return run
        delivered = args.clients * args.messages
        last = max(d["last_ts"] for d in dones if d is not None)
        run.rate = delivered / (last - trigger.started_at)
        run.cpu_us_each = [(b - a) * 1e6 / delivered for a, b in zip(s0, s1, strict=True)]
        run.cpu_us = sum(run.cpu_us_each)
        if b0 is not None and b1 is not None:
            run.backplane_us = (b1 - b0) * 1e6 / delivered
        run.ok = True
        return run
    finally:
        for c in clients:
            c.stop()
        for s in servers:
            s.stop()


@dataclass
class Latency:
    setup: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)


def latency(backplane: Backplane, args: Any, ordered: bool = False) -> Latency:
    result = Latency(backplane.label + (" ordered" if ordered else ""))
    server_cpu, client_cpus = pinning(not args.no_pin)
    servers = start_instances(2, backplane, server_cpu, ordered)
    events_per_s = args.rate / args.clients
    messages = max(1, int(events_per_s * args.seconds))
    clients: list[LoadClient] = []
    probe: subprocess.Popen[str] | None = None
    try:
        ports = ",".join(str(s.port) for s in servers)
        cmd = [sys.executable, __file__, "--probe", ports, "--probes", str(args.probes)]

        def start_probes() -> subprocess.Popen[str] | None:
            proc = subprocess.Popen(
                pinned(client_cpus[0], cmd),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            if read_json(proc, 30).get("event") != "ready":
                result.problems.append("the latency probes did not get ready")
            return proc

        if args.probes_first:  # first in each instance's fan-out order
            probe = start_probes()
        if not result.problems:
            clients, result.problems = open_clients(
                servers, args.clients, messages, args.size, client_cpus[0], args
            )
        if not result.problems and not args.probes_first:  # last in fan-out order
            probe = start_probes()
        if result.problems or probe is None:
            return result
        for c in clients:  # the probes, not the load clients, get their CPU first
            os.setpriority(os.PRIO_PROCESS, c.pid, 10)
        for srv, count in zip(servers, split(args.clients, 2), strict=True):
            if srv.wait_peers(count + args.probes, 10) != count + args.probes:
                result.problems.append(f"instance on port {srv.port} lacks peers")
                return result
        for c in clients:
            c.send("go")
        time.sleep(0.3)  # let every load client take the "go" before the first event
        query = f"/publish?n={messages}&size={args.size}&rate={events_per_s}&stamp=1"
        trigger = Trigger(servers[0].port, query, args.seconds + 60)
        trigger.start()
        dones = [c.expect("done", args.seconds + args.timeout) for c in clients]
        trigger.join(10)
        assert probe.stdin is not None
        probe.stdin.write(f"report {messages}\n")
        probe.stdin.flush()
        report = read_json(probe, 30)
        result.problems = verify(dones, args.clients, messages)
        for name, stats in report.get("targets", {}).items():
            if stats["problems"]:
                result.problems.append(f"probes on {name}: {stats['problems']}")
        result.stats = report.get("targets", {})
        result.ok = not result.problems and bool(result.stats)
        return result
    finally:
        if probe is not None:
            stop_pid(probe)
            for stream in (probe.stdin, probe.stdout):
                if stream is not None:
                    stream.close()
        for c in clients:
            c.stop()
        for s in servers:
            s.stop()


@dataclass
class RelayCost:
    setup: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    # mode -> (A us/event, B us/event or None, backplane us/event or None)
    costs: dict[str, tuple[float, float | None, float | None]] = field(default_factory=dict)


def relay_cost(backplane: Backplane | None, args: Any) -> RelayCost:
    """CPU per relayed event with no subscribers at all: what every instance
    pays for every event published anywhere in the cluster. Without a
    backplane: the baseline (one instance publishing the same way)."""
    result = RelayCost(backplane.label if backplane is not None else "none (1 instance)")
    server_cpu, _ = pinning(not args.no_pin)
    servers = start_instances(1 if backplane is None else 2, backplane, server_cpu)
    n = int(args.relay_rate * args.relay_seconds)
    try:
        for mode, query in (
            ("one per loop iteration", f"/publish?n={n}&size={args.size}&rate={args.relay_rate}"),
            ("batched (one burst)", f"/publish?n={n}&size={args.size}"),
        ):
            s0 = [cpu_seconds(s.pid) for s in servers]
            b0 = backplane.cpu() if backplane is not None else None
            trigger = Trigger(servers[0].port, query, args.relay_seconds + 60)
            trigger.start()
            trigger.join(args.relay_seconds + 70)
            time.sleep(0.5)  # B finishes receiving
            s1 = [cpu_seconds(s.pid) for s in servers]
            b1 = backplane.cpu() if backplane is not None else None
            if trigger.status != 200:
                result.problems.append(f"/publish answered {trigger.status}")
                return result
            used = [(y - x) * 1e6 / n for x, y in zip(s0, s1, strict=True)]
            bp_us = (b1 - b0) * 1e6 / n if b0 is not None and b1 is not None else None
            result.costs[mode] = (used[0], used[1] if len(used) > 1 else None, bp_us)
        if isinstance(backplane, Redis) and args.passive:
            mode = f"one per loop iteration, +{args.passive} passive subscribers"
            cmd = [sys.executable, __file__, "--listen", backplane.url]
            listeners = subprocess.Popen(
                pinned(pinning(not args.no_pin)[1][0], [*cmd, "--passive", str(args.passive)]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                if read_json(listeners, 30).get("event") != "ready":
                    result.problems.append("the passive subscribers did not get ready")
                    return result
                query = f"/publish?n={n}&size={args.size}&rate={args.relay_rate}"
                b0 = backplane.cpu()
                s0 = [cpu_seconds(s.pid) for s in servers]
                trigger = Trigger(servers[0].port, query, args.relay_seconds + 60)
                trigger.start()
                trigger.join(args.relay_seconds + 70)
                time.sleep(0.5)
                b1 = backplane.cpu()
                s1 = [cpu_seconds(s.pid) for s in servers]
                a_us, b_us = ((y - x) * 1e6 / n for x, y in zip(s0, s1, strict=True))
                result.costs[mode] = (a_us, b_us, (b1 - b0) * 1e6 / n)
            finally:
                stop_pid(listeners)
                for stream in (listeners.stdin, listeners.stdout):
                    if stream is not None:
                        stream.close()
        result.ok = True
        return result
    finally:
        for s in servers:
            s.stop()


async def listen_main(url: str, count: int) -> None:
    """``count`` raw connections subscribed to the "bench" channel of the Redis
    at ``url`` (a unix socket), reading and discarding: more cluster members."""
    path = url.removeprefix("unix://")
    subscribe = b"*2\r\n$9\r\nSUBSCRIBE\r\n$5\r\nbench\r\n"
    conns = []
    for _ in range(count):
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(subscribe)
        conns.append((reader, writer))
    for reader, _ in conns:
        await reader.readuntil(b":1\r\n")  # the subscription is confirmed

    async def drain(reader: asyncio.StreamReader) -> None:
        while await reader.read(1 << 16):
            pass

    tasks = [asyncio.ensure_future(drain(reader)) for reader, _ in conns]
    print(json.dumps({"event": "ready"}), flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    await stdin.read()  # until the parent closes it (or stops us)
    for task in tasks:
        task.cancel()
    for _, writer in conns:
        writer.close()


# -- --sharded: channels per topic against one channel ------------------------------------

SHARD_GOAL = 0.35


class RedisCluster:
    """A Redis Cluster of ``size`` primaries on loopback ports, no persistence."""

    label = "Redis Cluster"

    def __init__(self, cpu: int | None, size: int = 3) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server and redis-cli are needed (apt-get install redis)")
        self.dir = tempfile.mkdtemp(prefix="bench-redis-cluster-")
        self.procs: list[subprocess.Popen[bytes]] = []
        ports = [free_port() for _ in range(2 * size)]
        for i in range(size):
            node_dir = os.path.join(self.dir, str(i))
            os.mkdir(node_dir)
            cmd = [binary, "--port", str(ports[i]), "--cluster-port", str(ports[size + i]),
                   "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--save", "",
                   "--appendonly", "no", "--dir", node_dir]  # fmt: skip
            quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
            self.procs.append(subprocess.Popen(pinned(cpu, cmd), **quiet))
        nodes = [f"127.0.0.1:{port}" for port in ports[:size]]
        self.url = f"redis://{nodes[0]}"
        deadline = time.monotonic() + 30
        while True:  # every node answers, then the cluster is made and ok
            done = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        while b"cluster_state:ok" not in subprocess.run(
            [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True
        ).stdout or any(
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(port), "cluster", "info"], capture_output=True
            ).stdout
            for port in ports[1:size]
        ):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Redis Cluster did not become ok: {done.stdout!r}")
            time.sleep(0.05)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            stop_pid(proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class ShardRun:
    setup: str
    round: int
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    cpu_us_each: list[float] = field(default_factory=list)  # per event published anywhere
    publisher_us: float = 0.0  # the publishers', per event they published
    redis_us: float | None = None
    relayed_in: list[int] = field(default_factory=list)


def shard_run(setup: str, rnd: int, backplane: Redis | RedisCluster, args: Any) -> ShardRun:
    run = ShardRun(setup, rnd)
    k, topics = args.instances, args.topics
    n = int(args.shard_rate * args.shard_seconds)  # events each publisher publishes
    server_cpu, client_cpus = pinning(not args.no_pin)
    env = {"SYNC": "redis", "SYNC_URL": backplane.url, "CHANNEL": f"bench{rnd}",
           "SHARDED": "1" if setup != "one channel" else "0",
           "UVLOOP": os.environ.get("UVLOOP", "1")}  # fmt: skip
    servers: list[Server] = []
    publishers: list[Server] = []
    checker: subprocess.Popen[str] | None = None
    try:
        for _ in range(k):
            servers.append(Server("cluster-node", server_cpu, env))
        for _ in range(args.publishers):
            publishers.append(Server("cluster-node", client_cpus[0], env))
        ports = ",".join(str(srv.port) for srv in servers)
        cmd = [sys.executable, __file__, "--shard-check", ports, "--topics", str(topics),
               "--shard-events", str(n), "--publishers", str(args.publishers)]  # fmt: skip
        checker = subprocess.Popen(
            pinned(client_cpus[0], cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        if read_json(checker, 30).get("event") != "ready":
            run.problems.append("the checking streams did not get ready")
            return run
        time.sleep(1.0)  # every instance's subscriptions are in place by now (the check says)
        before = [json.loads(http_get(srv.port, "/stats")[1]) for srv in servers]
        s0 = [cpu_seconds(srv.pid) for srv in servers]
        p0 = sum(cpu_seconds(srv.pid) for srv in publishers)
        b0 = backplane.cpu()
        query = f"/publish?n={n}&size={args.size}&rate={args.shard_rate}&topics={topics}"
        triggers = [
            Trigger(srv.port, f"{query}&offset={i}", args.shard_seconds + 60)
            for i, srv in enumerate(publishers)
        ]
        for trigger in triggers:
            trigger.start()
        for trigger in triggers:
            trigger.join(args.shard_seconds + 70)
        assert checker.stdin is not None
        checker.stdin.write("report\n")
        checker.stdin.flush()
        report = read_json(checker, args.timeout)
        s1 = [cpu_seconds(srv.pid) for srv in servers]
        p1 = sum(cpu_seconds(srv.pid) for srv in publishers)
        b1 = backplane.cpu()
        after = [json.loads(http_get(srv.port, "/stats")[1]) for srv in servers]
        run.problems += [f"/publish answered {t.status}" for t in triggers if t.status != 200]
        run.problems += report.get("problems", ["the checker did not report"])
        published = args.publishers * n
        run.cpu_us_each = [(y - x) * 1e6 / published for x, y in zip(s0, s1, strict=True)]
        run.publisher_us = (p1 - p0) * 1e6 / published
        run.redis_us = (b1 - b0) * 1e6 / published
        run.relayed_in = [
            a["relayed_in"] - b["relayed_in"] for a, b in zip(after, before, strict=True)
        ]
        run.ok = not run.problems
        return run
    finally:
        if checker is not None:
            stop_pid(checker)
            for stream in (checker.stdin, checker.stdout):
                if stream is not None:
                    stream.close()
        for srv in servers + publishers:
            srv.stop()


async def shard_check_main(ports: list[int], topics: int, n: int, publishers: int) -> None:
    """One stream per instance, following its share of the topics; checks that
    each gets every event of its topics once, in each publisher's order."""
    import aiohttp

    k = len(ports)
    expected = [0] * k
    for publisher in range(publishers):
        for i in range(n):
            expected[(publisher + i) % topics % k] += 1
    got = [0] * k
    last: list[dict[tuple[int, int], int]] = [{} for _ in range(k)]
    problems: list[str] = []
    welcomed = 0
    ready, complete = asyncio.Event(), asyncio.Event()

    async def stream(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal welcomed
        url = f"http://127.0.0.1:{ports[index]}/sse?topics={index}:{k}:{topics}"
        async with session.get(url) as response:
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].rstrip(b"\r\n")
                if data == b"welcome":
                    welcomed += 1
                    if welcomed == k:
                        ready.set()
                    continue
                publisher, i = (int(x) for x in data.split(b":", 2)[:2])
                topic = (publisher + i) % topics
                if topic % k != index:
                    problems.append(f"instance {index} got topic t{topic}, not its own")
                key = (publisher, topic)
                if last[index].get(key, -1) >= i:
                    problems.append(f"instance {index}: t{topic} out of order or twice")
                last[index][key] = i
                got[index] += 1
                if got == expected:
                    complete.set()

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [asyncio.ensure_future(stream(session, i)) for i in range(k)]
        await asyncio.wait_for(ready.wait(), 30)
        print(json.dumps({"event": "ready"}), flush=True)
        await stdin.readline()  # "report": every publish was made
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(complete.wait(), 30)
        await asyncio.sleep(0.3)  # (a duplicate would show now)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if got != expected:
        problems.append(f"events received per instance {got}, expected {expected}")
    print(json.dumps({"event": "report", "problems": sorted(set(problems))[:5]}), flush=True)


def sharded_main(args: Any) -> None:
    server_cpu, client_cpus = pinning(not args.no_pin)
    n = int(args.shard_rate * args.shard_seconds)
    print(f"# Sharded benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    where = (
        f"instances on CPU {server_cpu}; checking streams and Redis on CPU "
        + ",".join(map(str, client_cpus))
        if server_cpu is not None
        else "not pinned"
    )
    print(f"{platform.node()}: {len(cpus())} CPUs, Linux {platform.release()}; {where}")
    print(versions())
    print(
        f"{args.instances} instances, {args.topics:,} topics (each instance's stream follows "
        f"{args.topics // args.instances}); {args.publishers} more instance(s) publishing "
        f"{args.shard_rate:g} events/s each, one per loop iteration, for "
        f"{args.shard_seconds:g} s ({n:,} each), spread over every topic; {args.rounds} "
        "interleaved rounds, fresh processes per run\n",
        flush=True,
    )
    runs: list[ShardRun] = []
    redis = Redis(client_cpus[0])
    cluster = RedisCluster(client_cpus[0])
    setups: list[tuple[str, Redis | RedisCluster]] = [
        ("one channel", redis), ("sharded", redis), ("sharded, Redis Cluster", cluster)
    ]  # fmt: skip
    try:
        for rnd in range(1, args.rounds + 1):
            for setup, backplane in setups:
                run = shard_run(setup, rnd, backplane, args)
                runs.append(run)
                note = (
                    " / ".join(f"{x:.1f}" for x in run.cpu_us_each)
                    + f" us CPU per event; publisher {run.publisher_us:.1f}; Redis "
                    f"{run.redis_us:.1f}; relayed in {run.relayed_in}"
                    if run.ok
                    else "INVALID: " + "; ".join(run.problems)
                )
                print(f"[round {rnd}] {setup}: {note}", file=sys.stderr, flush=True)
    finally:
        redis.stop()
        cluster.stop()
    # Per round (the rounds are interleaved: each round's setups met the same noise)
    total = {(r.setup, r.round): median(r.cpu_us_each) for r in runs if r.ok}
    one = "one channel"
    head = ["setup", "each instance, CPU us per event published (median, min-max)",
            "x one channel", "publishers, us per event", "Redis servers, us per event",
            "relayed in, per instance", "valid"]  # fmt: skip
    rows = []
    invalid = []
    for setup, _ in setups:
        mine = [r for r in runs if r.setup == setup]
        good = [r for r in mine if r.ok]
        invalid += [f"{setup} round {r.round}: " + "; ".join(r.problems) for r in mine if not r.ok]
        if not good:
            rows.append([setup, *["-"] * 5, f"0/{len(mine)} INVALID"])
            continue
        each = [x for r in good for x in r.cpu_us_each]
        rounds = [r.round for r in good]
        ratio = [total[setup, n] / total[one, n] for n in rounds if (one, n) in total]
        redis_us = [r.redis_us for r in good if r.redis_us is not None]
        rows.append(
            [
                setup,
                f"{median([total[setup, n] for n in rounds]):.1f} "
                f"({min(each):.1f}-{max(each):.1f})",
                f"{median(ratio):.2f}x" if ratio else "-",
                f"{median([r.publisher_us for r in good]):.1f}",
                f"{median(redis_us):.1f}" if redis_us else "-",
                f"{median([median([float(x) for x in r.relayed_in]) for r in good]):,.0f}",
                f"{len(good)}/{len(mine)}",
            ]
        )
    print(table(head, rows))
    print(f"\nGoal: each instance's CPU at most {SHARD_GOAL}x its CPU with one channel; "
          "every event delivered once (checked). Ratios are per round (each round's "
          "setups met the same load), then the median; a shared machine is noisy.")  # fmt: skip
    if invalid:
        print("\nInvalid runs:")
        for line in invalid:
            print("  " + line)
        sys.exit(1)


def read_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return {}
    line = proc.stdout.readline()
    return json.loads(line) if line else {}


# -- the latency probe (a child process) -----------------------------------------------------


async def probe_main(ports: list[int], per: int) -> None:
    """``per`` streams on each port; every event's data starts with its publish
    time in ns: record publish -> receive, and check the order."""
    import aiohttp

    names = ["A", "B", "C", "D"][: len(ports)]
    latencies: dict[str, list[float]] = {n: [] for n in names}
    problems: dict[str, list[str]] = {n: [] for n in names}
    welcomed = 0
    all_welcomed = asyncio.Event()

    async def stream(session: aiohttp.ClientSession, port: int, name: str) -> None:
        nonlocal welcomed
        last = 0
        async with session.get(f"http://127.0.0.1:{port}/sse") as response:
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                now = time.monotonic_ns()
                data = line[6:].rstrip(b"\r\n")
                if data == b"welcome":
                    welcomed += 1
                    if welcomed == per * len(ports):
                        all_welcomed.set()
                    continue
                stamp = int(data.split(b" ", 1)[0])
                if stamp <= last:
                    problems[name].append("out of order or twice")
                last = stamp
                latencies[name].append((now - stamp) / 1e3)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as session:
        tasks = [
            asyncio.ensure_future(stream(session, port, name))
            for port, name in zip(ports, names, strict=True)
            for _ in range(per)
        ]
        await asyncio.wait_for(all_welcomed.wait(), 30)
        print(json.dumps({"event": "ready"}), flush=True)
        command = (await reader.readline()).decode().split()
        expected = int(command[1]) if len(command) > 1 else 0
        await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    targets = {}
    for name in names:
        values = sorted(latencies[name])
        if len(values) != expected * per:
            problems[name].append(f"{len(values)} events, expected {expected * per}")
        targets[name] = {
            "n": len(values),
            "p50_us": quantile(values, 0.50),
            "p99_us": quantile(values, 0.99),
            "max_us": values[-1] if values else 0.0,
            "problems": "; ".join(sorted(set(problems[name]))),
        }
    print(json.dumps({"event": "report", "targets": targets}), flush=True)


async def round_trip(backplane: Backplane, n: int = 2000) -> tuple[float, float]:
    """p50 and p99 (us) of one round trip to the backplane server from this
    process: a Redis PING, a Postgres SELECT 1."""
    samples: list[float] = []
    if backplane.label == "Redis":
        from redis.asyncio import Redis

        client = Redis.from_url(backplane.url)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                await client.ping()
                samples.append((time.perf_counter() - t0) * 1e6)
        finally:
            await client.aclose()
    else:
        import asyncpg

        conn = await asyncpg.connect(backplane.url)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                await conn.fetchval("SELECT 1")
                samples.append((time.perf_counter() - t0) * 1e6)
        finally:
            await conn.close()
    samples.sort()
    return quantile(samples, 0.5), quantile(samples, 0.99)


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# -- report ------------------------------------------------------------------------------------


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--backends", default="redis,postgres", help="comma list: redis, postgres")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=300, help="events per burst (default 300)")
    ap.add_argument("--size", type=int, default=64, help="bytes of data per event")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved burst rounds (default 4)")
    ap.add_argument("--rate", type=float, default=20000, help="deliveries/s offered (latency)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of the latency run")
    ap.add_argument("--probes", type=int, default=10, help="latency probes per instance")
    ap.add_argument(
        "--probes-first",
        action="store_true",
        help="connect the probes before the load clients (first in fan-out order; "
        "default: last, the slowest peers of an instance)",
    )
    ap.add_argument(
        "--alone",
        action="store_true",
        help="also burst on one instance with the backplane and no other instance (what "
        "relaying costs the publisher, apart from a second process)",
    )
    ap.add_argument(
        "--ordered",
        action="store_true",
        help="also measure latency with ordered=True, and the backplane's round trip",
    )
    ap.add_argument("--relay-rate", type=float, default=2000, help="events/s (relay cost)")
    ap.add_argument("--relay-seconds", type=float, default=3.0, help="length (relay cost)")
    ap.add_argument("--idle-timeout", type=float, default=10.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    ap.add_argument(
        "--spread",
        action="store_true",
        help="pin instance B to the second CPU (default: A and B share the first, the single "
        "instance's CPU budget)",
    )
    ap.add_argument(
        "--passive",
        type=int,
        default=30,
        help="extra passive Redis subscribers for the relay cost (0: none; default 30)",
    )
    ap.add_argument(
        "--sharded",
        action="store_true",
        help="channels per topic against one channel (see above) instead of the rest",
    )
    ap.add_argument("--instances", type=int, default=4, help="--sharded: instances (4)")
    ap.add_argument("--topics", type=int, default=1000, help="--sharded: topics (1,000)")
    ap.add_argument(
        "--shard-rate", type=float, default=500, help="--sharded: events/s each instance publishes"
    )
    ap.add_argument("--shard-seconds", type=float, default=4.0, help="--sharded: length")
    ap.add_argument("--publishers", type=int, default=1, help="--sharded: publishing instances (1)")
    ap.add_argument("--shard-check", help=argparse.SUPPRESS)  # internal: the checking streams
    ap.add_argument("--shard-events", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: run as the latency probe
    ap.add_argument("--listen", help=argparse.SUPPRESS)  # internal: the passive subscribers
    args = ap.parse_args()
    if args.probe:
        asyncio.run(probe_main([int(p) for p in args.probe.split(",")], args.probes))
        return
    if args.listen:
        asyncio.run(listen_main(args.listen, args.passive))
        return
    if args.shard_check:
        ports = [int(p) for p in args.shard_check.split(",")]
        asyncio.run(shard_check_main(ports, args.topics, args.shard_events, args.publishers))
        return
    exit_on_sigterm()
    if args.sharded:
        raise_nofile(1000)
        sharded_main(args)
        return
    backends = [b for b in args.backends.split(",") if b]
    for b in backends:
        if b not in ("redis", "postgres"):
            ap.error(f"unknown backend {b!r}")
    raise_nofile(args.clients + 500)
    server_cpu, client_cpus = pinning(not args.no_pin)
    if args.spread and client_cpus[0] is not None:
        SPREAD.append(client_cpus[0])
    where = (
        f"instances on CPU {server_cpu}"
        + (f" (B on CPU {SPREAD[0]})" if SPREAD else "")
        + "; load clients, probes and the backplane server on CPU "
        + ",".join(map(str, client_cpus))
        if server_cpu is not None
        else "not pinned"
    )
    print(f"# Cluster benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{platform.node()}: {len(cpus())} CPUs, Linux {platform.release()}; {where}")
    print(versions())
    try:
        import hiredis  # type: ignore[import-not-found,unused-ignore]  # noqa: F401

        print("redis-py parser: hiredis")
    except ImportError:
        print("redis-py parser: pure Python (hiredis not installed)")
    print(
        f"burst: {args.clients:,} clients x {args.messages} events x {args.size} B, "
        f"{args.rounds} interleaved rounds, fresh processes per run\n",
        flush=True,
    )

    bursts: list[Run] = []
    baseline = relay_cost(None, args)
    print(f"[relay cost] baseline: {baseline.costs or baseline.problems}", file=sys.stderr)
    latencies: list[Latency] = []
    round_trips: dict[str, tuple[float, float]] = {}
    costs: list[RelayCost] = [baseline]
    for name in backends:
        backplane: Backplane = (Redis if name == "redis" else Postgres)(client_cpus[0])
        try:
            for rnd in range(1, args.rounds + 1):
                setups = ["single", backplane.label]
                if args.alone:
                    setups.append(f"{backplane.label} alone")
                for setup in setups:
                    if setup == "single" and name != backends[0]:
                        continue  # one baseline, measured alongside the first backend
                    run = burst(setup, rnd, None if setup == "single" else backplane, args)
                    bursts.append(run)
                    note = (
                        f"{run.rate:,.0f} deliveries/s, "
                        + " + ".join(f"{x:.3f}" for x in run.cpu_us_each)
                        + " us CPU/delivery"
                        if run.ok
                        else "INVALID: " + "; ".join(run.problems)
                    )
                    print(f"[burst round {rnd}] {setup}: {note}", file=sys.stderr, flush=True)
            for ordered in (False, True) if args.ordered else (False,):
                lat = latency(backplane, args, ordered)
                latencies.append(lat)
                print(f"[latency] {lat.setup}: {lat.stats or lat.problems}", file=sys.stderr)
            if args.ordered:
                round_trips[backplane.label] = asyncio.run(round_trip(backplane))
            cost = relay_cost(backplane, args)
            costs.append(cost)
            print(f"[relay cost] {cost.setup}: {cost.costs or cost.problems}", file=sys.stderr)
        finally:
            backplane.stop()

    single = [r for r in bursts if r.setup == "single" and r.ok]
    base = median([r.cpu_us for r in single]) if single else None
    head = ["setup", "deliveries/s", "server CPU us/delivery (A+B)", "x single", "backplane",
            "valid"]  # fmt: skip
    rows = []
    invalid = []
    for setup in ("single", "Redis", "Redis alone", "Postgres", "Postgres alone"):
        mine = [r for r in bursts if r.setup == setup]
        if not mine:
            continue
        good = [r for r in mine if r.ok]
        invalid += [f"{setup} round {r.round}: " + "; ".join(r.problems) for r in mine if not r.ok]
        if setup == "single":
            label = "1 instance"
        elif setup.endswith(" alone"):
            label = f"1 instance with {setup.split()[0]} (relays to no one)"
        else:
            label = f"2 instances via {setup} (publish on A)"
        if not good:
            rows.append([label, "-", "-", "-", "-", f"0/{len(mine)} INVALID"])
            continue
        cpu = median([r.cpu_us for r in good])
        each = range(len(good[0].cpu_us_each))
        parts = " + ".join(f"{median([r.cpu_us_each[i] for r in good]):.3f}" for i in each)
        bp = [r.backplane_us for r in good if r.backplane_us is not None]
        rows.append(
            [
                label,
                f"{median([r.rate for r in good]):,.0f}",
                f"{cpu:.3f}" + (f" ({parts})" if len(good[0].cpu_us_each) > 1 else ""),
                f"{cpu / base:.2f}x" if base else "-",
                f"Redis {median(bp):.3f} us/delivery" if bp else "-",
                f"{len(good)}/{len(mine)}",
            ]
        )
    print(f"## Burst: {args.clients:,} clients x {args.messages} x {args.size} B, every event "
          "verified (none lost, none twice)\n")  # fmt: skip
    print(table(head, rows))
    print(f"\nGoal: a cluster's CPU per delivery at most {GOAL}x a single instance's.\n")

    events_per_s = args.rate / args.clients
    print(
        f"## Latency: publish on A -> receive, {args.rate:,.0f} deliveries/s offered "
        f"({events_per_s:g} events/s to {args.clients:,} clients) for {args.seconds:g} s, "
        f"{args.probes} probes per instance\n"
    )
    head = ["backplane", "A (local) p50", "A p99", "B (relayed) p50", "B p99", "B max", "valid"]
    rows = []
    for lat in latencies:
        if not lat.ok:
            invalid.append(f"latency via {lat.setup}: " + "; ".join(lat.problems))
            rows.append([lat.setup, "-", "-", "-", "-", "-", "INVALID"])
            continue
        a, b = lat.stats["A"], lat.stats["B"]
        rows.append(
            [
                lat.setup,
                fmt_ms(a["p50_us"]),
                fmt_ms(a["p99_us"]),
                fmt_ms(b["p50_us"]),
                fmt_ms(b["p99_us"]),
                fmt_ms(b["max_us"]),
                "yes",
            ]
        )
    print(table(head, rows))
    for label, (p50, p99) in round_trips.items():
        plain = next((x for x in latencies if x.setup == label and x.ok), None)
        ordered_run = next((x for x in latencies if x.setup == f"{label} ordered" and x.ok), None)
        print(f"\n{label} round trip from a client: p50 {fmt_ms(p50)}, p99 {fmt_ms(p99)}")
        if plain is not None and ordered_run is not None:
            sides = [("A", "A (local)"), ("B", "B (relayed)"), ("all", "every subscriber")]
            for side, name in sides:
                if side == "all":  # the p99 the cluster's subscribers see: the worse side's
                    extra = max(ordered_run.stats[x]["p99_us"] for x in "AB") - max(
                        plain.stats[x]["p99_us"] for x in "AB"
                    )
                else:
                    extra = ordered_run.stats[side]["p99_us"] - plain.stats[side]["p99_us"]
                bound = p99 + 2000
                verdict = "within" if extra <= bound else "OVER"
                print(
                    f"  {name}: ordered p99 - unordered p99 = {fmt_ms(extra)}; goal: at most "
                    f"round trip p99 + 2 ms = {fmt_ms(bound)}: {verdict}"
                )

    print(
        f"\n## Relay cost: CPU us per event published on A, {args.relay_rate:g} events/s for "
        f"{args.relay_seconds:g} s, no subscribers anywhere (what every instance pays for every "
        "event published in the cluster). A's figure includes the benchmark's own publish "
        "loop: compare it with the baseline\n"
    )
    head = ["backplane", "publishes", "A (publisher)", "B (receiver)", "backplane server"]
    rows = []
    for cost in costs:
        if not cost.ok:
            invalid.append(f"relay cost via {cost.setup}: " + "; ".join(cost.problems))
            continue
        for mode, (a_us, b_us, bp_us) in cost.costs.items():
            bp = f"{bp_us:.1f}" if bp_us is not None else "-"
            b = f"{b_us:.1f}" if b_us is not None else "-"
            rows.append([cost.setup, mode, f"{a_us:.1f}", b, bp])
    print(table(head, rows))
    if invalid:
        print("\nInvalid runs:")
        for line in invalid:
            print("  " + line)
        sys.exit(1)


if __name__ == "__main__":
    main()
