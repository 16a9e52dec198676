"""What ``RedisSync`` was given to reach Redis, checked, and how to name it.

A URL or a ``redis.asyncio.Redis`` client (single-channel mode, or sharded
mode on a plain Redis or, found on connect, a cluster node); with
``sharded=True`` also a ``redis.asyncio.RedisCluster`` client or a list of
its nodes' URLs. Names never show a password (``_redact.py``).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from ._redact import redact, secrets_of

__all__ = ["Target"]


class Target:
    """The checked ``url_or_client`` of a ``RedisSync`` (see the module docstring)."""

    def __init__(self, url_or_client: object, sharded: bool) -> None:
        self.url: str | None = None
        self.given: Redis | None = None
        self.cluster: Any = None  # a RedisCluster: its settings and nodes (never used to send)
        self.urls: list[str] = []  # a cluster's nodes
        self.secrets: tuple[str, ...] = ()
        if isinstance(url_or_client, str):
            if not url_or_client:
                raise ValueError("RedisSync needs a Redis URL or client")
            self.url = url_or_client
            self.secrets = secrets_of(url_or_client)
        elif isinstance(url_or_client, Redis):
            self.given = url_or_client
            self.secrets = _password(url_or_client.connection_pool.connection_kwargs)
        elif isinstance(url_or_client, RedisCluster) or (
            isinstance(url_or_client, list | tuple)
            and url_or_client
            and all(isinstance(u, str) and u for u in url_or_client)
        ):
            if not sharded:
                raise TypeError("a Redis Cluster needs RedisSync(..., sharded=True)")
            if isinstance(url_or_client, RedisCluster):
                self.cluster = url_or_client
                self.secrets = _password(url_or_client.get_connection_kwargs())
            else:
                self.urls = [str(u) for u in url_or_client]
                self.secrets = tuple(x for u in self.urls for x in secrets_of(u))
        else:
            raise TypeError(
                "RedisSync needs a Redis URL (str), a redis.asyncio.Redis client, or (with "
                "sharded=True) a redis.asyncio.RedisCluster client or a list of its nodes' "
                f"URLs, not {type(url_or_client).__name__}"
            )

    def where(self) -> str:
        """``Redis at ...`` or ``Redis Cluster at ...``, without a password."""
        if self.url is not None:
            return f"Redis at {redact(self.url)}"
        if self.urls:
            return "Redis Cluster at " + ", ".join(redact(u) for u in self.urls)
        if self.cluster is not None:
            nodes = self.cluster.nodes_manager.startup_nodes.values()
            return "Redis Cluster at " + ", ".join(f"{n.host}:{n.port}" for n in nodes)
        assert self.given is not None
        kwargs = self.given.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return f"Redis at unix://{kwargs['path']}"
        return f"Redis at {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _password(kwargs: dict[str, Any]) -> tuple[str, ...]:
    password = kwargs.get("password")
    return (password,) if isinstance(password, str) and password else ()
