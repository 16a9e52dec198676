"""Addresses in reports without any part of a credential.

A backplane names its server in every report (log lines, ``error`` hooks):
``redact`` gives the address as it may be shown; ``secrets_of`` the strings
that must never appear, which ``scrub`` removes from a client library's own
messages (one about a malformed address may quote a piece of it).
"""

from __future__ import annotations

import contextlib
from urllib.parse import SplitResult, unquote_plus, urlsplit

__all__ = ["quotes", "redact", "scrub", "secrets_of"]

_HIDDEN = "***"
# Names of URL query parameters and key=value DSN keywords whose value is a secret
_SECRET_KEYS = frozenset({"password", "passwd", "pass", "pwd", "sslpassword"})
# Scrubbing a library's message: shorter fragments of a password are left
# (replacing them would garble the message around them)
_MIN_FRAGMENT = 3


def redact(address: str) -> str:
    """``address`` as a report may show it, without any part of a credential.

    Parsed, not pattern-matched, since a password may hold any character (redis-py
    takes ``redis://:a@b@host``: the password is ``a@b``). A URL keeps its
    scheme, user, host, path and query, but not its password nor a password
    query parameter; one whose password holds a ``/``, ``?`` or ``#`` (where
    it ends is then ambiguous) shows its scheme only. A key=value DSN
    (libpq) loses its ``password`` value; one that does not parse shows
    nothing.
    """
    if "://" in address:
        return _redact_url(address)
    try:
        pairs = _conninfo(address)
    except ValueError:
        return _HIDDEN
    return " ".join(f"{k}={_HIDDEN if k.lower() in _SECRET_KEYS else v}" for k, v, _ in pairs)


def _split_url(url: str) -> SplitResult | None:
    """``url``'s parts, or ``None`` when it does not parse or its password
    holds a ``/``, ``?`` or ``#`` (redis-py and asyncpg would cut it there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.netloc and "@" in parts.path + parts.query + parts.fragment:
        return None  # an '@' past the authority: a password cut short
    return parts


def _redact_url(url: str) -> str:
    parts = _split_url(url)
    if parts is None:
        return f"{url.partition('://')[0]}://{_HIDDEN}"
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = hostinfo
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{_HIDDEN}@{hostinfo}" if colon else f"{user}@{hostinfo}"
    query = "&".join(map(_redact_parameter, parts.query.split("&")))
    return f"{url.partition('://')[0]}://{netloc}{parts.path}{'?' if query else ''}{query}"


def _redact_parameter(pair: str) -> str:
    key, eq, _ = pair.partition("=")
    return f"{key}={_HIDDEN}" if eq and unquote_plus(key).lower() in _SECRET_KEYS else pair


def _conninfo(text: str) -> list[tuple[str, str, str]]:
    """The ``(keyword, value as written, value)`` of a libpq key=value
    connection string; ``ValueError`` when it is not one."""
    pairs: list[tuple[str, str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i == n:
            return pairs
        start = i
        while i < n and text[i] != "=" and not text[i].isspace():
            i += 1
        key = text[start:i]
        while i < n and text[i].isspace():
            i += 1
        if not key or i == n or text[i] != "=":
            raise ValueError("not a key=value connection string")
        i += 1
        while i < n and text[i].isspace():
            i += 1
        start = i
        value, i = _conninfo_value(text, i)
        pairs.append((key, text[start:i], value))


def _conninfo_value(text: str, i: int) -> tuple[str, int]:
    """A value from ``text[i]`` on: quoted ('...', backslash escapes) or up
    to whitespace; returns it unescaped and the index past it."""
    quoted = i < len(text) and text[i] == "'"
    i += quoted
    out: list[str] = []
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if (c == "'" and quoted) or (c.isspace() and not quoted):
            return "".join(out), i + quoted
        out.append(c)
        i += 1
    if quoted:
        raise ValueError("unterminated quoted value")
    return "".join(out), i


def secrets_of(address: str) -> tuple[str, ...]:
    """What must not appear in a report about ``address``: its password(s) as
    written and decoded and, for a URL whose password is cut short by a
    ``/`` (see ``redact``), the pieces a parser may quote. Longest first."""
    found: set[str] = set()
    if "://" in address:
        _url_secrets(address, found)
    else:
        with contextlib.suppress(ValueError):
            found.update(v for k, _, v in _conninfo(address) if k.lower() in _SECRET_KEYS)
    found = {piece for secret in found for piece in (secret, unquote_plus(secret))}
    found.discard("")
    return tuple(sorted(found, key=len, reverse=True))


def _url_secrets(url: str, found: set[str]) -> None:
    parts = _split_url(url)
    if parts is None:
        # Cut short: the password is somewhere before the last '@'; a
        # parser may quote any piece of it (as a port, a host, a path).
        userinfo = url.partition("://")[2].rpartition("@")[0]
        found.add(userinfo.partition(":")[2])
        for sep in "?#@:":
            userinfo = userinfo.replace(sep, "/")
        found.update(piece for piece in userinfo.split("/") if len(piece) >= _MIN_FRAGMENT)
        return
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        found.add(userinfo.partition(":")[2])
    for pair in parts.query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and unquote_plus(key).lower() in _SECRET_KEYS:
            found.add(value)


def quotes(exc: BaseException, secrets: tuple[str, ...]) -> bool:
    """Whether ``exc`` or an exception in its chain quotes one of ``secrets``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while secrets and current is not None and id(current) not in seen:
        seen.add(id(current))
        text = f"{current} {current.args!r}"
        if any(secret in text for secret in secrets):
            return True
        current = current.__cause__ or current.__context__
    return False


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` (a library's message) with every secret replaced."""
    for secret in secrets:
        text = text.replace(secret, _HIDDEN)
    return text
