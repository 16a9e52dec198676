"""The POST's responses: 200 and its refusals (400, 408, 413, 415, 429).

Each is a ``HalfClose``: it tells the channel still reading the upload (its
``channel``, when the caller sets one) that it has been written, so that the
channel can half-close the connection right then. The caller decides whether
to ``force_close()`` and raises the refusals (aiohttp wants HTTPExceptions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiohttp import web

__all__ = ["HalfClose", "Upload", "for_status"]


class Upload(Protocol):
    """What a response tells once it has been written: a channel still reading."""

    def response_written(self) -> None: ...


class HalfClose(web.StreamResponse):
    """A response that may tell its channel when it has been written (aiohttp
    offers no other hook between writing a response and its lingering read)."""

    channel: Upload | None = None

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.response_written()


class _Ok(HalfClose, web.Response):
    pass


class _BadRequest(HalfClose, web.HTTPBadRequest):
    pass


class _Timeout(HalfClose, web.HTTPRequestTimeout):
    pass


class _TooLarge(HalfClose, web.HTTPRequestEntityTooLarge):
    pass


class _Unsupported(HalfClose, web.HTTPUnsupportedMediaType):
    pass


class _TooMany(HalfClose, web.HTTPTooManyRequests):
    pass


_ERRORS: dict[int, Callable[..., HalfClose]] = {
    400: _BadRequest,
    408: _Timeout,
    415: _Unsupported,
    429: _TooMany,
}


def for_status(status: int, reason: str, limit: int) -> HalfClose:
    """The response for ``status`` (200, or a refusal for ``reason``; 413
    states ``limit``, the largest message allowed)."""
    resp: HalfClose
    if status == 413:
        resp = _TooLarge(
            max_size=limit,
            actual_size=limit + 1,
            text=f"message larger than {limit} bytes",
        )
    elif status == 200:
        resp = _Ok()
    else:
        resp = _ERRORS[status](text=reason)
    return resp
