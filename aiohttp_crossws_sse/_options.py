"""The adapter's keyword options, validated once at construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

__all__ = ["Options"]

_POLICIES = ("close", "drop-oldest")


def _number(name: str, value: Any, *, allow_none: bool = False, positive: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"option {name!r} must be a number, not {type(value).__name__}")
    if positive and not value > 0:
        raise ValueError(f"option {name!r} must be > 0, got {value!r}")


def _integer(name: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"option {name!r} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"option {name!r} must be >= {minimum}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Options:
    """Every option of ``sse_adapter`` (README "Options")."""

    keepalive: float = 15.0
    max_buffer: int = 1_048_576
    slow_consumer: str = "close"
    send_timeout: float | None = 30.0
    max_peers: int | None = None
    max_message_size: int = 1_048_576
    namespace: Callable[[web.Request], str] | None = None
    sync: Any = None
    history: int = 0
    shutdown_retry: int | None = None
    shutdown_timeout: float = 5.0
    retry_after: int = 5

    def __post_init__(self) -> None:
        _number("keepalive", self.keepalive)
        _integer("max_buffer", self.max_buffer)
        if self.slow_consumer not in _POLICIES:
            raise ValueError(
                f"option 'slow_consumer' must be one of {_POLICIES}, got {self.slow_consumer!r}"
            )
        _number("send_timeout", self.send_timeout, allow_none=True)
        _integer("max_peers", self.max_peers, allow_none=True)
        _integer("max_message_size", self.max_message_size)
        if self.namespace is not None and not callable(self.namespace):
            raise TypeError("option 'namespace' must be callable: (request) -> str")
        if self.sync is not None:
            from .sync.base import Sync

            if not isinstance(self.sync, Sync):
                raise TypeError(
                    "option 'sync' must be a backplane (aiohttp_crossws_sse.sync.Sync), "
                    f"not {type(self.sync).__name__}"
                )
        _integer("history", self.history, minimum=0)
        if self.history:
            raise ValueError(
                "option 'history': Last-Event-ID replay is not available yet; leave it at 0"
            )
        _integer("shutdown_retry", self.shutdown_retry, allow_none=True, minimum=0)
        _number("shutdown_timeout", self.shutdown_timeout)
        _integer("retry_after", self.retry_after, minimum=0)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Options:
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                raise TypeError(f"sse_adapter() got an unknown option {name!r}")
        return cls(**kwargs)
