"""Broadcast fan-out: how fast does each server deliver a burst to many SSE clients?

For every run: a fresh server process (pinned to the first CPU), load-client
processes (pinned to the other CPUs) that open C streams and wait for each
one's welcome event, then ``GET /publish?n=M&size=S``: M events of S bytes,
back to back, to every client. The figure is deliveries/s = C x M / (time
from the trigger until the last client got its last event).

A run is valid only if every client received exactly M events of exactly S
bytes of data; an invalid run is printed as such, that server gets no median
for the scenario, and the script exits with status 1.

Rounds are interleaved (A B C, A B C, ...) so that drift of the machine hits
every server alike; the table shows medians and the min-max spread.

Examples:
  python benchmarks/fanout.py                          # every scenario, 3 rounds
  python benchmarks/fanout.py --scenarios small --rounds 5 --servers ours,aiohttp-sse
  python benchmarks/fanout.py --scenarios large --clients 20 --messages 50
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import sys
import threading
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
    http_get,
    machine_busy_seconds,
    median,
    pinning,
    raise_nofile,
    split,
    status_kib,
    table,
)

SCENARIOS: dict[str, tuple[int, int, int]] = {  # name -> (clients, messages, size)
    "small": (1000, 200, 64),
    "large": (100, 200, 16384),
    # one long burst: a server that batches it costs O(clients + events)
    "burst": (1000, 2000, 64),
}
BASELINE = "aiohttp-sse"
BUSY = 0.85  # a process this busy is what limits the rate
DISTURBED = 0.25  # other work using more than this share of a CPU during a run: warn


@dataclass
class Run:
    server: str
    scenario: str
    round: int
    clients: int
    messages: int
    size: int
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    rate: float = 0.0  # deliveries per second
    seconds: float = 0.0
    cpu_us: float = 0.0  # server CPU per delivery
    server_busy: float = 0.0
    client_busy: float = 0.0  # of the busiest client process
    others_busy: float = 0.0
    ramp_s: float = 0.0
    peak_rss_mib: float = 0.0


class Trigger(threading.Thread):
    """GET /publish in the background: it may answer only when everything was sent."""

    def __init__(self, port: int, path: str, timeout: float) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.timeout = port, path, timeout
        self.started_at = 0.0
        self.status: int | str = "no answer"

    def run(self) -> None:
        self.started_at = time.monotonic()
        try:
            self.status = http_get(self.port, self.path, self.timeout)[0]
        except OSError as exc:
            self.status = f"{type(exc).__name__}: {exc}"


def measure(run: Run, args: argparse.Namespace) -> Run:
    server_cpu, client_cpus = pinning(not args.no_pin)
    procs = args.client_procs or (2 if len(cpus()) >= 3 else 1)
    procs = min(procs, len(client_cpus) if client_cpus[0] is not None else procs)
    try:
        srv = Server(run.server, server_cpu)
    except RuntimeError as exc:
        run.problems.append(str(exc))
        return run
    clients: list[LoadClient] = []
    try:
        time.sleep(0.2)
        for i, count in enumerate(split(run.clients, procs)):
            clients.append(
                LoadClient(
                    srv.port,
                    client_cpus[i % len(client_cpus)],
                    connections=count,
                    messages=run.messages,
                    size=run.size,
                    idle_timeout=args.idle_timeout,
                    timeout=args.timeout,
                )
            )
        readies = [c.expect("ready", args.timeout + 10) for c in clients]
        for c, ready in zip(clients, readies, strict=True):
            if ready is None:
                run.problems.append(f"load client did not get ready: {c.output()}")
            elif ready["failed"]:
                run.problems.append(f"{ready['failed']} streams did not open: {ready['failures']}")
        if run.problems:
            return run
        run.ramp_s = max(r["ramp_s"] for r in readies if r)
        peers = srv.wait_peers(run.clients, 10)
        if peers != run.clients:
            run.problems.append(f"/peers says {peers}, expected {run.clients}")
            return run

        for c in clients:
            c.send("go")
        s0, m0 = cpu_seconds(srv.pid), machine_busy_seconds()
        c0 = [cpu_seconds(c.pid) for c in clients]
        trigger = Trigger(srv.port, f"/publish?n={run.messages}&size={run.size}", args.timeout)
        trigger.start()
        dones = [c.expect("done", args.timeout + args.idle_timeout + 10) for c in clients]
        s1, m1 = cpu_seconds(srv.pid), machine_busy_seconds()
        c1 = [cpu_seconds(c.pid) for c in clients]
        trigger.join(10)
        if srv.alive():
            run.peak_rss_mib = status_kib(srv.pid, "VmHWM") / 1024
        return judge(run, srv, trigger, dones, (s0, s1), (c0, c1), (m0, m1))
    finally:
        for c in clients:
            c.stop()
        srv.stop()


def judge(
    run: Run,
    srv: Server,
    trigger: Trigger,
    dones: list[dict[str, Any] | None],
    server_cpu: tuple[float, float],
    client_cpu: tuple[list[float], list[float]],
    machine: tuple[float, float],
) -> Run:
    if any(d is None for d in dones):
        run.problems.append("a load client did not report (crashed or hung)")
        return run
    done = [d for d in dones if d is not None]
    total = {k: sum(d[k] for d in done) for k in ("delivered", "complete", "bad", "extra")}
    total.update(
        closed=sum(d["closed_early"] for d in done), corrupt=sum(d["corrupt"] for d in done)
    )
    expected = run.clients * run.messages
    if total["delivered"] != expected or total["complete"] != run.clients:
        run.problems.append(
            f"delivered {total['delivered']:,} of {expected:,} events; "
            f"{total['complete']} of {run.clients} clients got all {run.messages}"
        )
    if total["bad"]:
        run.problems.append(f"{total['bad']:,} events with data of the wrong size")
    if total["extra"]:
        run.problems.append(f"{total['extra']:,} events more than published")
    if total["closed"]:
        run.problems.append(f"the server closed {total['closed']} streams before their last event")
    whys = {d["why"] for d in done} - {"complete"}
    if whys:
        run.problems.append("load client stopped waiting: " + ", ".join(sorted(whys)))
    if trigger.status != 200:
        run.problems.append(f"/publish answered {trigger.status}")
    if not srv.alive():
        run.problems.append(f"server died: {srv.output()}")
    last = max(d["last_ts"] for d in done)
    run.seconds = last - trigger.started_at if last else 0.0
    if run.seconds > 0:
        server_s = server_cpu[1] - server_cpu[0]
        clients_s = [b - a for a, b in zip(*client_cpu, strict=True)]
        run.rate = total["delivered"] / run.seconds
        run.server_busy = server_s / run.seconds
        run.client_busy = max(clients_s) / run.seconds
        others = (machine[1] - machine[0]) - server_s - sum(clients_s)
        run.others_busy = max(0.0, others) / run.seconds
        if total["delivered"]:
            run.cpu_us = server_s * 1e6 / total["delivered"]
    run.ok = not run.problems
    return run


def disturbed(run: Run) -> bool:
    """Other work used much CPU during a run long enough for that to be measured."""
    return run.ok and run.seconds >= 1.0 and run.others_busy > DISTURBED


def report(scenario: str, runs: list[Run], servers: list[str]) -> tuple[str, list[str]]:
    """The table for one scenario, and the list of invalid runs."""
    clients, messages, size = runs[0].clients, runs[0].messages, runs[0].size
    title = (
        f"{scenario}: {clients:,} clients x {messages:,} events x {size:,} B "
        f"= {clients * messages:,} deliveries per run, back to back"
    )
    valid: dict[str, list[Run]] = {}
    invalid: list[str] = []
    for name in servers:
        mine = [r for r in runs if r.server == name]
        if all(r.ok for r in mine):
            valid[name] = mine
        for r in mine:
            if not r.ok:
                invalid.append(f"{name} round {r.round}: INVALID: " + "; ".join(r.problems))
    base = median([r.rate for r in valid[BASELINE]]) if BASELINE in valid else None
    head = [
        "server",
        "deliveries/s (median)",
        "min-max",
        f"x {BASELINE}",
        "server CPU us/delivery",
        "CPU busy % server / client",
        "limited by",
        "peak RSS MiB",
        "valid runs",
    ]
    rows = []
    for name in servers:
        mine = [r for r in runs if r.server == name]
        good = [r for r in mine if r.ok]
        status = f"{len(good)}/{len(mine)}" + ("" if len(good) == len(mine) else " INVALID")
        if name not in valid:
            rows.append([SERVERS[name][1], "-", "-", "-", "-", "-", "-", "-", status])
            continue
        rate = median([r.rate for r in good])
        server_busy = median([r.server_busy for r in good])
        client_busy = median([r.client_busy for r in good])
        limits = [
            w for w, busy in (("server", server_busy), ("client", client_busy)) if busy > BUSY
        ]
        rows.append(
            [
                SERVERS[name][1],
                f"{rate:,.0f}",
                f"{min(r.rate for r in good):,.0f}-{max(r.rate for r in good):,.0f}",
                f"{rate / base:.2f}x" if base else "-",
                f"{median([r.cpu_us for r in good]):.2f}",
                f"{server_busy * 100:.0f} / {client_busy * 100:.0f}",
                " + ".join(limits) or "-",
                f"{median([r.peak_rss_mib for r in good]):.0f}",
                status,
            ]
        )
    return title + "\n\n" + table(head, rows), invalid


def versions() -> str:
    out = [f"python {platform.python_version()}"]
    for pkg in ("aiohttp-crossws-sse", "aiohttp", "aiohttp-sse", "sse-starlette", "uvicorn"):
        try:
            out.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    try:
        out.append(f"uvloop {importlib.metadata.version('uvloop')}")
        if os.environ.get("UVLOOP") == "0":
            out[-1] += " (off: UVLOOP=0)"
    except importlib.metadata.PackageNotFoundError:
        out.append("uvloop not installed (asyncio loop)")
    return ", ".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help="comma list of "
        + ", ".join(f"{k} ({c:,} clients x {m} x {s:,} B)" for k, (c, m, s) in SCENARIOS.items()),
    )
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help="comma list of " + ", ".join(SERVERS)
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--clients", type=int, help="override the scenarios' client count")
    ap.add_argument("--messages", type=int, help="override the scenarios' events per client")
    ap.add_argument("--size", type=int, help="override the scenarios' bytes of data per event")
    ap.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="load-client processes (default: 2 with 3 or more CPUs, else 1)",
    )
    ap.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        help="a run fails when no event arrived for this long (default 10 s)",
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="per run phase (default 120 s)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    args = ap.parse_args()
    exit_on_sigterm()

    scenarios = [s for s in args.scenarios.split(",") if s]
    servers = [s for s in args.servers.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    for s in servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r}; choose from {', '.join(SERVERS)}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    for opt in ("clients", "messages", "size"):
        if getattr(args, opt) is not None and getattr(args, opt) < 1:
            ap.error(f"--{opt} must be at least 1")

    params = {
        s: (
            args.clients or SCENARIOS[s][0],
            args.messages or SCENARIOS[s][1],
            args.size or SCENARIOS[s][2],
        )
        for s in scenarios
    }
    raise_nofile(max(c for c, _, _ in params.values()) + 200)
    server_cpu, client_cpus = pinning(not args.no_pin)
    where = (
        f"server on CPU {server_cpu}, load clients on CPU {','.join(map(str, client_cpus))}"
        if server_cpu is not None
        else "not pinned (needs taskset and 2 CPUs)"
    )
    print(f"# SSE fan-out benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{platform.node()}: {len(cpus())} CPUs, Linux {platform.release()}; {where}")
    print(versions())
    print(f"{args.rounds} interleaved rounds, a fresh server process per run\n", flush=True)

    results: dict[str, list[Run]] = {s: [] for s in scenarios}
    for scenario in scenarios:
        clients, messages, size = params[scenario]
        for rnd in range(1, args.rounds + 1):
            for name in servers:
                run = measure(Run(name, scenario, rnd, clients, messages, size), args)
                results[scenario].append(run)
                if run.ok:
                    note = (
                        f"{run.rate:,.0f} deliveries/s in {run.seconds:.2f} s, "
                        f"{run.cpu_us:.2f} us CPU/delivery, busy server {run.server_busy:.0%} "
                        f"client {run.client_busy:.0%}"
                    )
                    if disturbed(run):
                        note += f" (disturbed: other work used {run.others_busy:.0%} of a CPU)"
                else:
                    note = "INVALID: " + "; ".join(run.problems)
                print(f"[{scenario} round {rnd}] {name}: {note}", file=sys.stderr, flush=True)

    all_invalid: list[str] = []
    for scenario in scenarios:
        text, invalid = report(scenario, results[scenario], servers)
        all_invalid += [f"{scenario} / {line}" for line in invalid]
        print("## " + text + "\n")
    print(
        "deliveries/s: clients x events / (last event received - /publish sent).\n"
        "server CPU us/delivery: the server's CPU time (all threads) from the trigger to the\n"
        "  last event / deliveries; steadier than the wall-clock rate.\n"
        "CPU busy: CPU time / wall time, % of one CPU (client: the busiest load-client process).\n"
        f"limited by: the process above {BUSY:.0%} busy. Where it is the (Python) load\n"
        "  client, the server could go faster than shown: compare CPU us/delivery instead.\n"
        "peak RSS: the server's VmHWM after the run (what it buffered for the burst)."
    )
    noisy = [r for rs in results.values() for r in rs if disturbed(r)]
    if noisy:
        print(
            f"\nWarning: during {len(noisy)} run(s) other work on the machine used more than "
            f"{DISTURBED:.0%} of a CPU; rerun on an idle machine for steadier figures."
        )
    if all_invalid:
        print("\nInvalid runs (every client must get every event, intact):")
        for line in all_invalid:
            print("  " + line)
        sys.exit(1)


if __name__ == "__main__":
    main()
