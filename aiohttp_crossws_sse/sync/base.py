"""The backplane interface: what an instance hands over and gets back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from .._publication import Publication

__all__ = ["Relayed", "Sync", "SyncLink"]


# Not frozen: a frozen dataclass's __init__ costs three times as much, and
# one is made per publish on the publisher and on every receiving instance.
@dataclass(slots=True)
class Relayed:
    """One publish as it travels between instances: text, not an encoded frame.

    ``namespace`` ``None`` means every namespace; ``id`` is the cluster-wide
    event id when the backplane assigns one (history in a cluster); ``sender``
    the id of the peer that published it, when the backplane hands an
    instance its own publishes back (that peer does not get it). ``remote``:
    it came from another instance through the backplane (a backend sets it
    on what it decodes; ``stats()["relayed_in"]`` counts these); not
    compared.
    """

    topic: str
    data: str
    event: str | None = None
    namespace: str | None = None
    id: str | None = None
    sender: str | None = None
    remote: bool = field(default=False, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SyncLink:
    """What the adapter gives its backplane on ``start``.

    ``instance_id``: unique per adapter instance; a backend tags what it
    relays with it and drops messages carrying its own (echo suppression).
    ``deliver``: hand a publish from another instance (or, for a backend
    that assigns event ids or is ``ordered``, every publish once it comes
    back) to the local subscribers; returns the event's id (``None``
    without history). ``report``: a failure the backend met later, in the
    background (a dropped connection, a reconnect that failed); the adapter
    logs it and runs the ``error`` hooks with ``peer`` ``None``.
    ``history``: the adapter's ``history`` option (events kept per topic;
    ``0``: off); a backend that can keep the cluster's history sets
    ``assigns_ids`` when it is on.
    ``resync``: the backplane was down and this instance may have missed
    publishes of the others (an outage; ``None`` = maybe): with history on,
    the adapter then makes its streams resume from their last id, so that
    no client goes on believing it has seen everything.
    """

    instance_id: str
    deliver: Callable[[Relayed], str | None]
    report: Callable[[Exception], None]
    history: int = 0
    resync: Callable[[], None] | None = None


class Sync(ABC):
    """A backplane. The adapter calls ``start`` on app startup, ``close`` on shutdown.

    Who assigns event ids: in one process, the adapter; with a backplane
    whose ``assigns_ids`` is true (and history on), the backplane — the
    adapter then delivers a publish locally only when the backplane hands it
    back through ``SyncLink.deliver`` with its id, so every instance sends
    the same id for the same event.
    """

    #: The backplane gives publishes their cluster-wide ids (set by ``start``
    #: when ``SyncLink.history`` is on and the backend keeps a history); it is
    #: then also the adapter's replay source (``fetch``, ``caught_up``).
    assigns_ids: bool = False
    #: The backplane hands every publish back, this instance's own included,
    #: in the backplane's one order: the adapter delivers a publish only
    #: then, so every instance delivers a topic's events in the same order.
    ordered: bool = False

    @property
    def up(self) -> bool:
        """Whether the others' publishes reach this instance now (a backend
        that can lose its connection says ``False`` while it is lost)."""
        return True

    @abstractmethod
    async def start(self, link: SyncLink) -> None:
        """Connect; call ``link.deliver`` for every publish made by *another* instance."""

    @abstractmethod
    def publish(self, message: Relayed) -> Publication:
        """Relay a local publish; never blocks. Returns what the publisher may
        await: settled once the backplane took it, or failed with
        ``BackplaneError`` (after ``message`` was handed to ``link.deliver``
        when the adapter delivers only what comes back: ``assigns_ids`` or
        ``ordered``). An exception raised here is reported (log and
        ``error`` hooks) and makes an awaited publish raise ``BackplaneError``."""

    @abstractmethod
    async def close(self) -> None:
        """Disconnect; idempotent."""

    def interest(self, topic: str, wanted: bool) -> None:  # noqa: B027 - optional, no-op
        """Called by the adapter when ``topic`` gains its first local subscriber
        in a namespace (``wanted`` true) and when it loses its last one there
        (false); a topic followed in two namespaces is reported twice. A
        backend that subscribes by interest (``RedisSync(sharded=True)``)
        follows only the topics wanted here; the others ignore it. Must not
        block or raise: it runs inside ``peer.subscribe``."""
