"""The POST channel of bidirectional mode: request body → messages → the peer's ``message`` hooks.

crossws's ``WebSocketSSE`` client keeps one ``POST`` open for a whole session
and writes every ``send()`` as one HTTP chunk of it; each chunk is one message
and must reach the hooks as soon as its last byte has arrived. A plain body is
one message.

The caller (the adapter) uses ``receive`` and ``refuse``; nothing else here is
for other modules. Two owners, and what they build on:

- ``channel.Channel``, one per POST: turns its body into messages. It stands
  in front of aiohttp's protocol (``tap``) to see every read as it happens.
  Plain bodies stay with aiohttp's parser and are drained right after each
  read (``forward``; the connection stays reusable). Chunked bodies are
  decoded by the channel (``raw``, with ``decoder``) from where aiohttp's
  parser stood when the handler took over, which ``takeover`` (the only
  package that knows aiohttp's internals) tells. Without those internals,
  aiohttp's public ``readchunk()`` is used (``basic``: correct, but such a
  chunk arrives one message late). ``state`` lists the channel's layers.
- ``inbox.Inbox``, one per peer (in ``Connection.inbox``): hands the messages
  of all that peer's POSTs to its ``message`` hooks one at a time, in arrival
  order, in a task of its own — a dropped POST never cancels a hook half-way.

Bounds, per peer: at most ``max_posts_per_peer`` open POSTs (one more: 429);
the bytes held for them past ``max_receive_buffer`` stop the reading (TCP
pushes back on the client) until the hooks catch up (``inbox``). A POST that
stalls in the middle of a message for ``receive_timeout`` gets 408
(``timeout``); between messages a streamed POST may idle as long as its peer
lives. The responses are listed in ``channel``; a response before the body's
end ends the connection without aiohttp's ten-second lingering read
(``linger``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from .channel import Channel
from .inbox import Inbox, Spawn, Stats

if TYPE_CHECKING:
    from .._connection import Connection
    from .._options import Options

__all__ = ["receive", "refuse"]


async def receive(
    request: web.Request,
    conn: Connection,
    *,
    options: Options,
    stats: Stats,
    spawn: Spawn,
) -> web.StreamResponse:
    """Read one ``POST``'s messages and hand them to ``conn``'s message hooks.

    The caller has run the upgrade hooks and matched ``conn`` to the request.
    Returns (or raises, for errors) the response (``channel`` lists them).
    ``spawn`` runs the hook task (the adapter waits for it on shutdown).
    """
    inbox = Inbox.of(conn, options, stats, spawn)
    channel = Channel(request, conn, inbox, options)
    if channel.precheck():
        return channel.reject()
    assert inbox is not None
    inbox.attach(channel)
    try:
        channel.start()
        await channel.wait()
    finally:
        try:
            await channel.stop()
        finally:
            inbox.detach(channel)
    return channel.response()


def refuse(request: web.Request, reason: str, options: Options) -> web.StreamResponse:
    """400 for a ``POST`` that reaches no peer (its id missing or unknown):
    the body is dropped, and the connection closes right after the response
    rather than after aiohttp's lingering read of a body that may never end.
    Raises the response, as ``receive`` does for errors."""
    channel = Channel(request, None, None, options)
    channel.status, channel.reason = 400, reason
    return channel.reject()
