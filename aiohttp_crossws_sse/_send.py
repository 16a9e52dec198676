"""One message POSTed back to a bidirectional stream (``EventSourceClient.send``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import hdrs
from multidict import CIMultiDict
from yarl import URL

from ._client_errors import SSEClientError, read_error_body

__all__ = ["CREDENTIALS", "encode_message", "post_message"]

#: Headers aiohttp drops when a redirect leaves the origin: a POST to where
#: the stream was redirected carries them only if the stream request did.
CREDENTIALS = (hdrs.AUTHORIZATION, hdrs.PROXY_AUTHORIZATION, hdrs.COOKIE)


def encode_message(data: str | bytes | Mapping[str, Any] | list[Any]) -> tuple[bytes, str]:
    """The body and content type: ``str`` as UTF-8 text, ``bytes`` as is,
    anything else as JSON."""
    if isinstance(data, bytes):
        return data, "application/octet-stream"
    if isinstance(data, str):
        return data.encode(), "text/plain; charset=utf-8"
    return json.dumps(data).encode(), "application/json"


async def post_message(
    session: aiohttp.ClientSession,
    target: URL,
    body: bytes,
    headers: CIMultiDict[str],
    timeout: float | None,
) -> int:
    """POST ``body`` to ``target``; return the 2xx status.

    Never follows a redirect (a 301 would turn the POST into a GET that
    reaches no peer) and ignores the session's ``raise_for_status``: any
    other status raises ``SSEClientError``. ``timeout`` bounds the
    whole exchange (aiohttp's own 300 s does not apply).
    """
    deadline = asyncio.timeout(timeout)
    try:
        async with (
            deadline,
            session.post(
                target,
                data=body,
                headers=headers,
                allow_redirects=False,
                raise_for_status=False,
                timeout=aiohttp.ClientTimeout(total=None),
            ) as response,
        ):
            if 200 <= response.status < 300:
                return response.status
            message = f"send to {target} failed: HTTP {response.status}"
            if 300 <= response.status < 400:
                location = response.headers.get(hdrs.LOCATION, "(no Location)")
                message += f", a redirect to {location}, not followed: not delivered"
            raise SSEClientError(
                message, status=response.status, body=await read_error_body(response)
            )
    except TimeoutError:
        if not deadline.expired():
            raise
        raise TimeoutError(
            f"send to {target}: no response within {timeout}s (send_timeout); "
            "the message may or may not have arrived"
        ) from None
