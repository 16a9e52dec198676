"""What ``publish`` returns: awaitable for the backplane's answer, free to ignore.

``publish`` is a plain method; its result is a ``Publication``. Ignoring it is
fire-and-forget (nothing to warn about: no coroutine, no future exists until
someone awaits). Awaiting it waits for the ``Receipt`` of the round trip that
carried the event — the backplane's answer for one batch — and gives the
event's id, or raises ``BackplaneError``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from ._errors import BackplaneError

__all__ = ["DONE", "Publication", "Receipt"]


class Receipt:
    """The backplane's answer for the publishes of one round trip: settled
    once, with their ids (when the backplane gives them) or an error."""

    __slots__ = ("_woken", "done", "error", "ids", "spared")

    def __init__(self) -> None:
        self.done = False
        self.error: BackplaneError | None = None
        #: The batch's event ids by position, when the backplane gives ids.
        self.ids: list[str | None] | None = None
        #: With ``error``: how many of the batch's first publishes were
        #: taken all the same (the round trip failed part-way).
        self.spared = 0
        self._woken: asyncio.Event | None = None  # made by the first awaiter only

    @classmethod
    def failed(cls, error: BackplaneError) -> Receipt:
        receipt = cls()
        receipt.fail(error)
        return receipt

    def settle(self) -> None:
        """The backplane took the batch (first answer wins)."""
        if not self.done:
            self.done = True
            if self._woken is not None:
                self._woken.set()

    def fail(self, error: BackplaneError, spared: int = 0) -> None:
        """The backplane did not take the batch — but for its first
        ``spared`` publishes (first answer wins)."""
        if not self.done:
            self.error = error
            self.spared = spared
            self.settle()

    async def wait(self) -> None:
        if not self.done:
            if self._woken is None:
                # an Event, not a future: one awaiter's cancellation must not
                # cancel the others' wait
                self._woken = asyncio.Event()
            await self._woken.wait()


class Publication:
    """The result of ``publish``: ``await`` it for the event's id (``None``
    without history) once the backplane took the event; raises
    ``BackplaneError`` when it could not (the event was still delivered to
    this instance's subscribers). Not awaiting it costs nothing."""

    __slots__ = ("id", "index", "receipt")

    def __init__(self, receipt: Receipt | None = None, index: int = 0, id: str | None = None):
        self.receipt = receipt
        self.index = index  # the event's position in the receipt's batch
        #: The id, when known at publish time (the adapter's own history).
        self.id = id

    def __await__(self) -> Generator[Any, None, str | None]:
        return self._result().__await__()

    async def _result(self) -> str | None:
        receipt = self.receipt
        if receipt is None:
            return self.id
        await receipt.wait()
        error = receipt.error
        if error is not None and self.index >= receipt.spared:
            # a fresh exception per awaiter: one raised object shared by many
            # would collect every awaiter's traceback
            raise BackplaneError(*error.args) from error.__cause__
        if self.id is not None:
            return self.id
        ids = receipt.ids
        return ids[self.index] if ids is not None and self.index < len(ids) else None

    def __repr__(self) -> str:
        receipt = self.receipt
        state = "done" if receipt is None or receipt.done else "pending"
        return f"<Publication {state}>"


#: Published, nothing to wait for, no id: what ``publish`` returns without a
#: backplane and without history (shared: it has no state to change).
DONE = Publication()
