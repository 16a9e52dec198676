"""What every network backplane must do, against the real servers: two
instances in separate processes, relaying through Redis or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from tests.backplanes import (  # noqa: F401 - the server fixtures
    FAST_OPTIONS,
    Node,
    check_adapter_publish,
    check_binary,
    check_namespaces,
    check_order,
    check_peer_publish,
    node_pair,
    postgres_server_fixture,
    redis_server_fixture,
)


@pytest.fixture(scope="module", params=["redis", "postgres"])
def nodes(request: pytest.FixtureRequest) -> Iterator[tuple[Node, Node]]:
    """Two instances, each its own process and aiohttp server, sharing one backplane."""
    if request.param == "redis":
        pytest.importorskip("redis.asyncio", reason="the redis extra is not installed")
        url = request.getfixturevalue("redis_server").url
    else:
        pytest.importorskip("asyncpg", reason="the postgres extra is not installed")
        url = request.getfixturevalue("postgres_server").dsn
    with node_pair(request.param, url, **FAST_OPTIONS) as pair:
        yield pair


async def test_adapter_publish_reaches_the_other_process(
    nodes: tuple[Node, Node], session: aiohttp.ClientSession
) -> None:
    await check_adapter_publish(*nodes, session)


async def test_peer_publish_reaches_the_other_process(
    nodes: tuple[Node, Node], session: aiohttp.ClientSession
) -> None:
    await check_peer_publish(*nodes, session)


async def test_namespaces_travel(nodes: tuple[Node, Node], session: aiohttp.ClientSession) -> None:
    await check_namespaces(*nodes, session)


async def test_1000_publishes_arrive_in_order_once(
    nodes: tuple[Node, Node], session: aiohttp.ClientSession
) -> None:
    await check_order(*nodes, session)


async def test_binary_payloads_survive(
    nodes: tuple[Node, Node], session: aiohttp.ClientSession
) -> None:
    await check_binary(*nodes, session)
