"""Direct socket writes: ``os.write`` to a peer's socket, one syscall, what
a C server does, when its transport holds nothing for it.

``Outbox.fd`` says whether a write may go straight to the socket. It is one
``int`` (not an enum) because a batch's writes check it for every subscriber
in passes without a Python step (``min(fds) >= 0``), which is what the
fan-out's speed hangs on. Its states:

=================  =====================================================
``fd``             state, and where a write goes
=================  =====================================================
``>= 0``           direct: the transport holds nothing; ``os.write`` to
                   the socket, what the kernel does not take goes to the
                   transport (and the state becomes spilled)
``NO_SOCKET`` -1   no socket to write to (TLS: bytes must be encrypted;
                   HTTP/1.0; detached): the transport
``<= -2``          spilled: socket ``unspilled(fd)``, whose transport may
                   hold bytes: the transport while it holds any, then
                   direct again
=================  =====================================================

Only the write path reads or changes it, through these functions.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from itertools import repeat
from typing import Protocol

__all__ = [
    "NO_SOCKET",
    "RETRY",
    "os_write",
    "socket_fd",
    "spilled",
    "unspilled",
    "write_all",
    "write_each",
]

# Python ignores SIGPIPE: a write to a socket the client closed fails with
# EPIPE instead of killing the process.
os_write = os.write
# The kernel has no room now: the transport takes the bytes and waits.
RETRY = (BlockingIOError, InterruptedError)
NO_SOCKET = -1


def spilled(fd: int) -> int:
    """``fd`` once the transport may hold bytes for its socket."""
    return -2 - fd if fd >= 0 else fd


def unspilled(fd: int) -> int:
    """The socket of a spilled ``fd`` (the transport is empty again)."""
    return -2 - fd


def socket_fd(transport: asyncio.Transport) -> int:
    """The socket a write may go to directly, or ``NO_SOCKET``: TLS (the
    bytes must be encrypted), no socket, or not POSIX."""
    if os.name != "posix" or transport.get_extra_info("sslcontext") is not None:
        return NO_SOCKET
    if transport.get_extra_info("ssl_object") is not None:
        return NO_SOCKET
    sock = transport.get_extra_info("socket")
    try:
        return int(sock.fileno()) if sock is not None else NO_SOCKET
    except (AttributeError, OSError, TypeError):
        return NO_SOCKET


class Writer(Protocol):
    """What ``write_each`` tells of a write that did not go whole."""

    def write_rest(self, transport: asyncio.Transport, data: bytes, sent: int) -> None: ...

    def write_failed(self, exc: OSError) -> None: ...


def write_each(
    outboxes: Sequence[Writer], transports: list[asyncio.Transport], fds: list[int], data: bytes
) -> None:
    """Write ``data`` to each of ``fds`` (the outboxes' sockets) back to
    back, then deal with what a write did not take, one by one."""
    sent, errors = write_all(fds, data)
    size = len(data)
    if sent.count(size) != len(sent):
        for i, done in enumerate(sent):
            if i in errors:
                outboxes[i].write_failed(errors[i])
            elif done != size:
                outboxes[i].write_rest(transports[i], data, done)


def write_all(fds: list[int], data: bytes) -> tuple[list[int], dict[int, OSError]]:
    """``os.write(fd, data)`` for each of ``fds`` in order, without a Python
    step between two. Returns what each took (0 when the kernel had no
    room) and the errors, by index."""
    sent: list[int] = []
    errors: dict[int, OSError] = {}
    remaining = iter(fds)
    again = repeat(data)
    while True:
        try:
            # On an exception map has consumed that fd, and sent holds the
            # results before it: carry on after it.
            sent.extend(map(os_write, remaining, again))
            return sent, errors
        except RETRY:
            sent.append(0)
        except OSError as exc:
            errors[len(sent)] = exc
            sent.append(0)
