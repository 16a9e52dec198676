"""Soak: many idle SSE connections held against one server process.

Opens N streams (default 10,000) from 1-4 load-client processes (raw
non-blocking sockets, 127.0.0.1 only), checks that the server counts them all
(/peers), and reports the server's resident memory (VmRSS from
/proc/<pid>/status) before and after, i.e. KiB per connection. It then holds
them for a while (the server's CPU use while idle), closes every client
socket, and reports how long until the server saw all peers leave.

One loopback address pair allows about 28,000 client ports
(net.ipv4.ip_local_port_range); the open-file limit must exceed N (the script
raises its soft limit to the hard one; raise the hard one with ulimit -Hn).

Examples:
  python benchmarks/soak.py                           # 10,000 connections to ours.py
  python benchmarks/soak.py --connections 2000 --hold 20
  python benchmarks/soak.py --server aiohttp-sse      # the same against a comparison server
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time

from _harness import (
    SERVERS,
    LoadClient,
    Server,
    cpu_seconds,
    cpus,
    exit_on_sigterm,
    pinning,
    raise_nofile,
    split,
    status_kib,
)


def port_range() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return high - low + 1
    except (OSError, ValueError):
        return 28232


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=10_000, help="idle streams (default 10000)")
    ap.add_argument(
        "--procs", type=int, default=0, help="load-client processes, 1-4 (default: one per 5,000)"
    )
    ap.add_argument(
        "--server", default="ours", choices=list(SERVERS), help="which server (default ours)"
    )
    ap.add_argument(
        "--hold", type=float, default=5.0, help="seconds to hold the streams open (default 5)"
    )
    ap.add_argument(
        "--leave-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the server to see every peer leave (default 60)",
    )
    ap.add_argument("--timeout", type=float, default=180.0, help="for connecting (default 180 s)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    args = ap.parse_args()
    exit_on_sigterm()
    n = args.connections
    if n < 1:
        ap.error("--connections must be at least 1")
    if n > port_range():
        ap.error(
            f"--connections {n} exceeds the {port_range()} ephemeral ports of one address pair"
        )
    procs = args.procs or min(4, math.ceil(n / 5000))
    if not 1 <= procs <= 4:
        ap.error("--procs must be 1 to 4")
    raise_nofile(n + 500)

    server_cpu, client_cpus = pinning(not args.no_pin)
    print(f"# SSE soak: {n:,} idle connections, {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"{platform.node()}: {len(cpus())} CPUs; server {SERVERS[args.server][1]}"
        + (f" on CPU {server_cpu}" if server_cpu is not None else "")
        + f"; {procs} load-client process(es)\n",
        flush=True,
    )
    ok = True
    srv = Server(args.server, server_cpu)
    clients: list[LoadClient] = []
    try:
        time.sleep(0.5)  # let start-up allocations settle
        rss0 = status_kib(srv.pid)
        t0 = time.monotonic()
        for i, count in enumerate(split(n, procs)):
            clients.append(
                LoadClient(
                    srv.port,
                    client_cpus[i % len(client_cpus)],
                    connections=count,
                    messages=0,
                    concurrency=500,
                    connect_timeout=60,
                    timeout=args.timeout,
                )
            )
        readies = [c.expect("ready", args.timeout + 10) for c in clients]
        ramp = time.monotonic() - t0
        opened = sum(r["welcomed"] for r in readies if r)
        failures: dict[str, int] = {}
        for r in readies:
            for reason, k in (r or {"failures": {"load client did not report": 1}})[
                "failures"
            ].items():
                failures[reason] = failures.get(reason, 0) + k
        peers = srv.wait_peers(opened, 30)
        time.sleep(1.0)  # let per-connection allocations settle
        rss1 = status_kib(srv.pid)
        hwm = status_kib(srv.pid, "VmHWM")
        cpu0 = cpu_seconds(srv.pid)
        time.sleep(args.hold)
        idle_cpu = (cpu_seconds(srv.pid) - cpu0) / args.hold if args.hold > 0 else 0.0
        peers_held = srv.peers()

        print(f"streams opened:            {opened:,} of {n:,} in {ramp:.1f} s")
        if failures:
            ok = False
            print(f"  failures:                {failures}")
        print(
            f"server counts (/peers):    {peers:,}; after holding {args.hold:g} s: {peers_held:,}"
        )
        print(f"server VmRSS before:       {rss0 / 1024:,.1f} MiB")
        print(f"server VmRSS with streams: {rss1 / 1024:,.1f} MiB (peak {hwm / 1024:,.1f} MiB)")
        if opened:
            print(f"per connection:            {(rss1 - rss0) / opened:,.1f} KiB")
        print(f"server CPU while idle:     {idle_cpu:.1%} of a CPU")
        if peers != n or peers_held != n:
            ok = False

        # close every client socket, then time how long until the server notices
        for c in clients:
            c.send("close")
        closed = [c.expect("closed", 60) for c in clients]
        t_closed = max((m["t"] for m in closed if m), default=time.monotonic())
        left = None
        deadline = t_closed + args.leave_timeout
        while time.monotonic() < deadline:
            if srv.peers() == 0:
                left = time.monotonic() - t_closed
                break
            time.sleep(0.01)
        if left is None:
            ok = False
            print(
                f"peers left:                NOT within {args.leave_timeout:g} s "
                f"({srv.peers():,} still counted)"
            )
        else:
            print(f"peers left:                all within {left:.2f} s of the clients closing")
        time.sleep(0.5)
        print(f"server VmRSS after:        {status_kib(srv.pid) / 1024:,.1f} MiB")
        if not srv.alive():
            ok = False
            print(f"server died: {srv.output()}")
    finally:
        for c in clients:
            c.stop()
        srv.stop()
    print(
        "\nVmRSS is the server's resident user-space memory; kernel socket buffers are not "
        "included. KiB per connection = (VmRSS with streams - VmRSS before) / streams."
    )
    if not ok:
        print("\nINVALID: not every stream opened, stayed open, or was seen to close.")
        sys.exit(1)


if __name__ == "__main__":
    main()
