"""The client's error, and what it says about a refused request."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import hdrs
from yarl import URL

from ._backoff import parse_retry_after
from ._errors import SSEError

__all__ = ["SSEClientError", "read_error_body", "refusal"]

_ERROR_BODY_LIMIT = 64 * 1024
_ERROR_BODY_WAIT = 5.0


class SSEClientError(SSEError):
    """A client failure: the server refused the stream or a ``send()``.

    Also raised by ``send()`` without a peer id and by ``next_event()`` once
    the stream has ended. ``status`` is the HTTP status (``None`` when there
    was no response), ``body`` the start of the response body as text, and
    ``retry_after`` the seconds of a ``503``'s ``Retry-After`` (else
    ``None``).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retry_after = retry_after


SSEClientError.__module__ = "aiohttp_crossws_sse.client"  # where users import it from


async def refusal(url: URL, response: aiohttp.ClientResponse, content_type: str) -> SSEClientError:
    """The error for a stream request answered with no event stream."""
    body = await read_error_body(response)
    if response.status != 200:
        message = f"event stream request to {url} failed: HTTP {response.status}"
    else:
        message = (
            f"event stream request to {url} returned content type "
            f"{content_type or '(none)'!r}, not 'text/event-stream'"
        )
    retry_after = None
    if response.status == 503:
        retry_after = parse_retry_after(response.headers.get(hdrs.RETRY_AFTER))
        if retry_after is not None:
            message += f" (Retry-After: {response.headers[hdrs.RETRY_AFTER]})"
    return SSEClientError(message, status=response.status, body=body, retry_after=retry_after)


async def read_error_body(response: aiohttp.ClientResponse) -> str:
    """Read the start of a refused response's body as text (bounded)."""
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(_ERROR_BODY_WAIT):
            while size < _ERROR_BODY_LIMIT:
                chunk = await response.content.readany()
                if not chunk:
                    break
                parts.append(chunk)
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError, OSError):
        pass
    raw = b"".join(parts)[:_ERROR_BODY_LIMIT]
    try:
        return raw.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # an unknown charset
        return raw.decode("utf-8", errors="replace")
