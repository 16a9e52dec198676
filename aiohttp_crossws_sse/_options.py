"""The adapter's keyword options, validated once at construction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from aiohttp import web

if TYPE_CHECKING:
    from .sync.base import Sync

__all__ = ["MAX_SEND_TIMEOUT", "AdapterOptions", "Options"]

_POLICIES = ("close", "drop-oldest")
_REFUSALS = ("503", "retry")

#: The largest ``send_timeout``: 2**31 - 1 milliseconds, the kernel's limit.
MAX_SEND_TIMEOUT = 2_147_483


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


class AdapterOptions(TypedDict, total=False):
    """The keyword options of ``sse_adapter`` as types (docs/concepts.md, "Options"):
    a misspelt name or a value of the wrong type is a type error — and a
    ``TypeError``/``ValueError`` naming the option at run time."""

    keepalive: float
    max_buffer: int
    slow_consumer: Literal["close", "drop-oldest"]
    send_timeout: float | None
    max_peers: int | None
    max_message_size: int
    namespace: Callable[[web.Request], str] | None
    sync: Sync | None
    history: int
    history_max_age: float | None
    retry: int | None
    shutdown_retry: int | None
    shutdown_timeout: float
    retry_after: int
    refusal: Literal["503", "retry"]
    max_receive_buffer: int
    max_posts_per_peer: int | None
    receive_timeout: float | None


@dataclass(frozen=True, slots=True)
class Options:
    """Every option of ``sse_adapter`` (docs/concepts.md, "Options")."""

    keepalive: float = 15.0
    max_buffer: int = 1_048_576
    slow_consumer: str = "close"
    send_timeout: float | None = 30.0
    max_peers: int | None = None
    max_message_size: int = 1_048_576
    namespace: Callable[[web.Request], str] | None = None
    sync: Any = None
    history: int = 0
    #: Seconds an event stays in the history (None: until evicted by count).
    history_max_age: float | None = None
    #: Milliseconds a client waits before reconnecting: a ``retry:`` line sent
    #: once at the start of every stream (None: none, the browser's default).
    retry: int | None = None
    shutdown_retry: int | None = None
    shutdown_timeout: float = 5.0
    retry_after: int = 5
    #: How a stream refused at ``max_peers`` or during shutdown is answered:
    #: "503" (with Retry-After), or "retry" (200 text/event-stream carrying
    #: ``retry:`` and ending at once), which an EventSource retries instead of
    #: giving up on for good.
    refusal: str = "503"
    # -- the POST channel (bidirectional mode; README "Options", _bidir) --------
    #: Bytes held for one peer's POSTs (messages read and not yet handled by
    #: its message hooks, plus the message each POST is reading; real sizes
    #: plus a per-message overhead); beyond it those POSTs stop reading.
    max_receive_buffer: int = 262_144
    #: POSTs one peer may have open at once; one more gets 429 (None: no cap).
    max_posts_per_peer: int | None = 16
    #: Seconds a POST may go without a byte in the middle of a message before
    #: it gets 408 (None: never). Between messages a streamed POST may idle.
    receive_timeout: float | None = 30.0

    def __post_init__(self) -> None:
        _number("keepalive", self.keepalive)
        _integer("max_buffer", self.max_buffer)
        if self.slow_consumer not in _POLICIES:
            raise ValueError(
                f"option 'slow_consumer' must be one of {_POLICIES}, got {self.slow_consumer!r}"
            )
        _number("send_timeout", self.send_timeout, allow_none=True)
        if self.send_timeout is not None and not self.send_timeout <= MAX_SEND_TIMEOUT:
            # It becomes the socket's TCP_USER_TIMEOUT, an unsigned 32-bit count
            # of milliseconds the kernel takes as a signed int.
            raise ValueError(
                f"option 'send_timeout' must be at most {MAX_SEND_TIMEOUT} seconds "
                f"(about 24.8 days) or None, got {self.send_timeout!r}"
            )
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
        _number("history_max_age", self.history_max_age, allow_none=True)
        if self.history_max_age is not None and not self.history:
            raise ValueError("option 'history_max_age' needs 'history' (events kept per topic)")
        _integer("retry", self.retry, allow_none=True, minimum=0)
        _integer("shutdown_retry", self.shutdown_retry, allow_none=True, minimum=0)
        _number("shutdown_timeout", self.shutdown_timeout)
        _integer("retry_after", self.retry_after, minimum=0)
        if not isinstance(self.refusal, str):
            raise TypeError(f"option 'refusal' must be a str, not {type(self.refusal).__name__}")
        if self.refusal not in _REFUSALS:
            raise ValueError(f"option 'refusal' must be one of {_REFUSALS}, got {self.refusal!r}")
        if self.refusal == "retry" and self.retry_after == 0:
            # retry: 0 would have refused browsers reconnect at once, in a loop
            raise ValueError("option 'refusal' 'retry' needs 'retry_after' >= 1 (seconds)")
        # -- the POST channel --------------------------------------------------------
        _integer("max_receive_buffer", self.max_receive_buffer)
        _integer("max_posts_per_peer", self.max_posts_per_peer, allow_none=True)
        _number("receive_timeout", self.receive_timeout, allow_none=True)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Options:
        known = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in known:
                raise TypeError(f"sse_adapter() got an unknown option {name!r}")
        return cls(**kwargs)
