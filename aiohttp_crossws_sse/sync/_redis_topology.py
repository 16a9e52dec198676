"""Which node serves a topic in sharded mode: one plain Redis, or a cluster's primaries.

On a Redis Cluster, the map of hash slots to primaries comes from ``CLUSTER
SLOTS`` (asked of any node that answers) at start, and again when a node
is lost or Redis answers that a slot moved; topics then follow their slot
(``Sharded.rerouted``). Each primary gets a ``Node`` of its own, with its own
client (connections made from the cluster client's, or the URLs', settings:
auth, TLS, timeouts) — no retries inside redis-py, so that a failure shows
at once and is reported, never silently redone (a publish twice).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol, cast

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import AbstractBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from ._redis_nodes import Node, NodeOwner
from ._shards import SLOTS, ShardNames, parse_slots


class _Owner(NodeOwner, Protocol):
    def rerouted(self) -> list[str]: ...


__all__ = ["Topology", "discover", "in_motion", "listening_connection", "no_retry", "redirect_of"]

# Connection settings never copied to our own connections: they would make
# redis-py ping, retry or decode behind our back.
_OURS = {
    "decode_responses": False,
    "health_check_interval": 0,
    "socket_timeout": None,
    "protocol": 2,
}
_NOT_CONNECTION = ("max_connections", "response_callbacks", "connection_class", "parser_class")
_REFRESH_INTERVAL = 0.5  # seconds between two reads of the cluster's map


class _NoBackoff(AbstractBackoff):
    def compute(self, failures: int) -> float:
        return 0.0


def no_retry() -> Retry:
    return Retry(_NoBackoff(), 0)


def listening_connection(connection_class: type[Any], kwargs: dict[str, Any]) -> Callable[[], Any]:
    """A factory of connections to listen on, with ``kwargs``'s settings."""
    settings = {k: v for k, v in kwargs.items() if k not in _NOT_CONNECTION}
    settings.update(_OURS)
    return lambda: connection_class(**settings)


class Topology:
    """The nodes of one sharded ``RedisSync`` (see the module docstring)."""

    def __init__(
        self,
        names: ShardNames,
        *,
        client: Redis | None = None,
        describe: str = "",
        template: tuple[type[Any], dict[str, Any]] | None = None,
        seeds: list[tuple[str, int]] | None = None,
        slots: Any = None,
    ) -> None:
        """Plain: ``client`` (described as ``describe``). Cluster: the
        ``template`` of connections, ``seeds`` to ask for the map, and the
        map already read (``slots``, a ``CLUSTER SLOTS`` reply), if any."""
        self.names = names
        self.cluster = client is None
        self._client = client
        self._describe = describe
        self._template = template
        self._seeds = seeds or []
        self._reply = slots
        self.nodes: dict[str, Node] = {}
        self._table: list[Node | None] = []
        self._routes: dict[str, Node | None] = {}
        self._single: Node | None = None
        self._refreshing = asyncio.Lock()
        self._refreshed = -1e18
        self._task: asyncio.Task[None] | None = None

    def node_of(self, topic: str) -> Node | None:
        """The node that serves ``topic`` (``None``: no node serves its slot)."""
        if self._single is not None:
            return self._single
        routes = self._routes
        node = routes.get(topic, routes)  # (routes: a sentinel for "not cached")
        if node is routes:
            if len(routes) >= 65536:
                routes.clear()
            slot = key_slot(self.names.channel_of(topic))
            node = routes[topic] = self._table[slot] if self._table else None
        return node  # type: ignore[return-value]

    def any_client(self) -> Redis:
        """A client of a node (to register scripts with; started first)."""
        return next(iter(self.nodes.values())).client

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self, owner: _Owner) -> None:
        """Connect every node (plain: the one; a cluster: every primary, at
        least one of which must answer); raises ``ConnectionError`` else."""
        if self._client is not None:
            node = self._single = Node(
                owner,
                self._describe,
                self._client,
                listening_connection(
                    self._client.connection_pool.connection_class,
                    self._client.connection_pool.connection_kwargs,
                ),
                cluster=False,
            )
            self.nodes[node.name] = node
            await node.start()
            return
        reply, self._reply = self._reply, None
        if reply is None:
            reply = await self._read_map()
            if reply is None:
                raise ConnectionError("no node of the Redis Cluster answered CLUSTER SLOTS")
        self._apply(owner, reply[0], reply[1], start=False)
        nodes = list(self.nodes.values())
        results = await asyncio.gather(*(n.start() for n in nodes), return_exceptions=True)
        failed: list[tuple[Node, Exception]] = []
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, Exception):
                failed.append((node, result))
            elif isinstance(result, BaseException):
                raise result
        if failed and len(failed) == len(nodes):
            raise failed[0][1]
        for node, exc in failed:
            node.start_down(exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        nodes = list(self.nodes.values())
        self.nodes.clear()
        self._single = None
        self._table = []
        self._routes.clear()
        for node in nodes:
            await node.stop()
            if node.client is not self._client:
                with contextlib.suppress(Exception):
                    await _close(node.client)

    # -- the cluster's map ---------------------------------------------------------------

    def moved(self, owner: _Owner, exc: BaseException) -> None:
        """Redis says a slot moved (or the cluster is in motion): a ``MOVED``
        names the slot's new owner, followed at once; the map is read again
        in the background either way."""
        if not self.cluster:
            return
        target = redirect_of(exc)
        if target is not None and self._table:
            slot, host, port = target
            node = self._node(owner, host, port, start=True)
            if self._table[slot] is not node:
                self._table[slot] = node
                self._routes.clear()
                self._follow(owner)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.refresh(owner))

    async def refresh(self, owner: _Owner) -> None:
        """Read the map again (at most every half second) and follow it."""
        if not self.cluster:
            return
        async with self._refreshing:
            loop = asyncio.get_running_loop()
            if loop.time() - self._refreshed < _REFRESH_INTERVAL:
                return
            self._refreshed = loop.time()
            reply = await self._read_map()
            if reply is not None:
                self._apply(owner, reply[0], reply[1], start=True)

    async def _read_map(self) -> tuple[Any, str] | None:
        """``CLUSTER SLOTS`` from the first node that answers, and its host
        (``None``: none did). Nodes that are up first, then the others, then
        the seeds."""
        nodes = sorted(self.nodes.values(), key=lambda n: not n.up)
        candidates = [(n.client, n.address) for n in nodes if n.address is not None]
        known = {address for _, address in candidates}
        temporary = []
        for seed in self._seeds:
            if seed not in known:
                client = self._new_client(*seed)
                temporary.append(client)
                candidates.append((client, seed))
        try:
            for client, (host, _) in candidates:
                try:
                    async with asyncio.timeout(2 * self._template_timeout()):
                        reply = await cast(Any, client).execute_command("CLUSTER", "SLOTS")
                except Exception:  # unreachable, or not answering: the next one
                    continue
                return reply, host
            return None
        finally:
            for client in temporary:
                with contextlib.suppress(Exception):
                    await _close(client)

    def _template_timeout(self) -> float:
        assert self._template is not None
        value = self._template[1].get("socket_connect_timeout")
        return float(value) if isinstance(value, int | float) else 2.5

    def _apply(self, owner: _Owner, reply: Any, seed_host: str, *, start: bool) -> None:
        table: list[Node | None] = [None] * SLOTS
        serving: set[str] = set()
        for first, last, host, port in parse_slots(reply, seed_host):
            node = self._node(owner, host, port, start=start)
            serving.add(node.name)
            table[first : last + 1] = [node] * (last + 1 - first)
        for name, node in self.nodes.items():
            if name in serving and not node.serving:
                node.revive()
            node.serving = name in serving
        self._table = table
        self._routes.clear()
        if start:
            self._follow(owner)

    def _node(self, owner: _Owner, host: str, port: int, *, start: bool) -> Node:
        """The node at ``host:port``, made if new (``start``: connecting in
        the background — a primary that appeared while running)."""
        name = _name(self.names, host, port)
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(
                owner,
                name,
                self._new_client(host, port),
                self._listening(host, port),
                cluster=True,
                address=(host, port),
            )
            if start:
                node.start_down(None)
        return node

    def _follow(self, owner: _Owner) -> None:
        """The map changed: topics follow their slots (reported: publishes on
        them may have been missed while they moved)."""
        moved = owner.rerouted()
        if moved:
            owner.report(
                ConnectionError(
                    f"{len(moved)} topics moved to other nodes of the Redis Cluster: "
                    "their publishes may have been missed meanwhile"
                )
            )
            owner.resync()

    def _new_client(self, host: str, port: int) -> Redis:
        assert self._template is not None
        cls, kwargs = self._template
        settings = {k: v for k, v in kwargs.items() if k not in _NOT_CONNECTION}
        settings.update(host=host, port=port, retry=no_retry(), decode_responses=False)
        return Redis(connection_pool=ConnectionPool(connection_class=cls, **settings))

    def _listening(self, host: str, port: int) -> Callable[[], Any]:
        assert self._template is not None
        cls, kwargs = self._template
        settings = {**kwargs, "host": host, "port": port, "retry": no_retry()}
        return listening_connection(cls, settings)


def _name(names: ShardNames, host: str, port: int) -> str:
    return f"Redis node {host}:{port}, channel {names.channel!r}"


async def discover(
    channel: str, client: Redis | None, cluster: Any, urls: list[str], describe: str
) -> Topology:
    """The topology behind what ``RedisSync`` was given: a cluster client,
    node URLs (a cluster's), or a client (``client``) that may talk to a
    cluster node (asked with ``CLUSTER SLOTS``)."""
    if cluster is not None:
        kwargs = dict(cluster.get_connection_kwargs())
        seeds = [(n.host, int(n.port)) for n in cluster.nodes_manager.startup_nodes.values()]
        return Topology(
            ShardNames(channel, True),
            template=(kwargs.get("connection_class", Connection), kwargs),
            seeds=seeds,
        )
    if urls:
        pools = [ConnectionPool.from_url(url) for url in urls]
        kwargs = dict(pools[0].connection_kwargs)
        seeds = [(p.connection_kwargs["host"], int(p.connection_kwargs["port"])) for p in pools]
        return Topology(
            ShardNames(channel, True), template=(pools[0].connection_class, kwargs), seeds=seeds
        )
    assert client is not None
    try:
        reply = await cast(Any, client).execute_command("CLUSTER", "SLOTS")
    except ResponseError as exc:
        if "cluster support disabled" not in str(exc):
            raise
        return Topology(ShardNames(channel, False), client=client, describe=describe)
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    host, port = str(kwargs.get("host", "localhost")), int(kwargs.get("port", 6379))
    return Topology(
        ShardNames(channel, True),
        template=(pool.connection_class, kwargs),
        seeds=[(host, port)],
        slots=(reply, host),
    )


async def _close(client: Redis) -> None:
    """Close a client of ours and its pool (a client given a pool leaves it open)."""
    await client.aclose()
    await client.connection_pool.disconnect()


def redirect_of(exc: BaseException) -> tuple[int, str, int] | None:
    """``(slot, host, port)`` of a ``MOVED`` reply (redis-py names it
    ``MovedError`` on some releases, a plain error on others)."""
    if isinstance(exc, MovedError):
        return exc.slot_id, exc.host, int(exc.port)
    text = str(exc)
    if not text.startswith("MOVED "):
        return None
    try:
        _, slot, address = text.split(" ")
        host, _, port = address.rpartition(":")
        return int(slot), host, int(port)
    except ValueError:
        return None


def in_motion(exc: BaseException) -> bool:
    """An error of a cluster in motion (a slot moved or moving, a node
    rejoining): read the map again and try later."""
    if isinstance(exc, AskError | ClusterDownError | TryAgainError):  # MovedError too
        return True
    return str(exc).startswith(("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN"))
