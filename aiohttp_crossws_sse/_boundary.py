"""The public boundary: the one place that makes a public call safe.

Every public method and property of ``Peer`` and ``SSEAdapter`` — today's
and any added later: the ``on_the_loop`` class decorator wraps them all —
first checks that it runs on the thread of the adapter's event loop, then
settles the write path (its lazy batch binds its subscribers), so no public
call can observe or change a half-done state (``publish`` only checks the
thread: it observes no subscriber, and the write path takes a publish into
its lazy batch itself, so a burst stays one batch):

* a call from another thread is refused with ``RuntimeError`` before it
  changes anything (a thread reaches the loop with
  ``loop.call_soon_threadsafe``);
* what a publish did to a slow consumer shows at once to the next call
  (``ready_state``, ``peers``, ``stats()``...).

Members documented as thread-safe (``SSEAdapter.stats``) are exempt and read
a snapshot; so are those that bind the loop (``handler``, ``start``) or run
before it (``setup``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from threading import get_ident
from typing import Any, Protocol, TypeVar

__all__ = ["LoopGuard", "on_the_loop"]


class _Settles(Protocol):
    def settle(self) -> None: ...


class LoopGuard:
    """The thread an adapter's loop runs on, and its write path to settle."""

    __slots__ = ("sched", "thread")

    def __init__(self, sched: _Settles) -> None:
        self.sched = sched
        self.thread: int | None = None  # bound by the first call on a running loop

    def bind(self) -> None:
        """The adapter runs on this thread's loop from now on (``start``, a stream)."""
        self.thread = get_ident()

    def on_loop_thread(self) -> bool:
        return get_ident() == self.thread

    def enter(self, what: str) -> None:
        """Check the thread, then settle: what every public call does first."""
        if get_ident() != self.thread:
            self.refuse(what)
        self.sched.settle()

    def check_thread(self, what: str) -> None:
        """The thread check alone: for ``publish``, which observes no
        subscriber (the write path takes a publish into the lazy batch
        itself; settling first would bind a burst at every publish)."""
        if get_ident() != self.thread:
            self.refuse(what)

    def refuse(self, what: str) -> None:
        """Not on the loop's thread (or no thread bound yet): bind this one
        if it runs a loop and none was bound, else raise."""
        here_runs_a_loop = asyncio._get_running_loop() is not None
        if self.thread is None and here_runs_a_loop:
            self.thread = get_ident()
            return
        if self.thread is None:
            raise RuntimeError(
                f"{what} must be called from a running event loop (none runs in this "
                "thread); from another thread use loop.call_soon_threadsafe(...)"
            )
        raise RuntimeError(
            f"{what} was called from another thread than the adapter's event loop's; "
            "use loop.call_soon_threadsafe(...) to call it on that loop (only stats() "
            "may be called from any thread)"
        )


_T = TypeVar("_T", bound=type)


def on_the_loop(
    guard_of: Callable[[Any], LoopGuard],
    *,
    exempt: frozenset[str],
    thread_only: frozenset[str] = frozenset(),
) -> Callable[[_T], _T]:
    """Wrap every public method and property of the class (but ``exempt``)
    in ``LoopGuard.enter`` (``thread_only`` ones: ``LoopGuard.check_thread``);
    ``guard_of(instance)`` finds the guard."""

    def wrap(cls: _T) -> _T:
        for name, member in list(vars(cls).items()):
            if name.startswith("_") or name in exempt:
                continue
            what = f"{cls.__name__}.{name}"
            settles = name not in thread_only
            if isinstance(member, property) and member.fget is not None:
                fget = _guarded(member.fget, what, guard_of, settles)
                setattr(cls, name, property(fget, member.fset, member.fdel))
            elif callable(member) and not isinstance(member, (staticmethod, classmethod, type)):
                setattr(cls, name, _guarded(member, what, guard_of, settles))
        return cls

    return wrap


def _guarded(
    fn: Callable[..., Any], what: str, guard_of: Callable[[Any], LoopGuard], settles: bool
) -> Callable[..., Any]:
    if settles:

        @functools.wraps(fn)
        def call(self: Any, /, *args: Any, **kwargs: Any) -> Any:
            guard_of(self).enter(what)
            return fn(self, *args, **kwargs)

        return call

    @functools.wraps(fn)
    def checked(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        guard_of(self).check_thread(what)
        return fn(self, *args, **kwargs)

    return checked
