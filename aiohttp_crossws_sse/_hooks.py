"""Hooks: ``define_hooks``, calling sync/async hooks, the resolver, ``SSEError``."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias, TypedDict

from aiohttp import web

from ._errors import SSEError
from ._frame import FORBIDDEN_IN_HEADER

if TYPE_CHECKING:
    from ._message import Message
    from ._peer import CloseDetails, Peer

__all__ = [
    "HOOK_NAMES",
    "Hooks",
    "HooksDict",
    "HooksLike",
    "SSEError",
    "Upgrade",
    "UpgradeAccept",
    "UpgradeResult",
    "define_hooks",
    "invoke",
    "logger",
    "run_error_hooks",
    "run_hooks",
    "run_upgrade",
    "sse_error",
]

logger = logging.getLogger("aiohttp_crossws_sse")


HOOK_NAMES = ("upgrade", "open", "message", "close", "error")


class UpgradeAccept(TypedDict, total=False):
    """What an ``upgrade`` hook returns to accept the stream with changes
    (any subset; a misspelt key is a type error, and a ``TypeError`` at run
    time)."""

    #: Response headers; they override the defaults (case-insensitively).
    headers: Mapping[str, str] | None
    #: Becomes ``peer.context`` (the very dict).
    context: dict[str, Any] | None
    #: The peer's namespace instead of the request path.
    namespace: str | None


#: ``None`` accepts; ``UpgradeAccept`` accepts with changes; a response rejects.
UpgradeResult: TypeAlias = "None | UpgradeAccept | web.StreamResponse"
UpgradeHook: TypeAlias = Callable[[web.Request], "UpgradeResult | Awaitable[UpgradeResult]"]
OpenHook: TypeAlias = Callable[["Peer"], "None | Awaitable[None]"]
MessageHook: TypeAlias = Callable[["Peer", "Message"], "None | Awaitable[None]"]
CloseHook: TypeAlias = Callable[["Peer", "CloseDetails"], "None | Awaitable[None]"]
ErrorHook: TypeAlias = Callable[["Peer | None", "SSEError"], "None | Awaitable[None]"]


class HooksDict(TypedDict, total=False):
    """Hooks as a ``dict`` (any subset); a misspelt name is a type error."""

    upgrade: UpgradeHook | None
    open: OpenHook | None
    message: MessageHook | None
    close: CloseHook | None
    error: ErrorHook | None


class Hooks:
    """A set of lifecycle hooks; any subset may be ``None``."""

    __slots__ = HOOK_NAMES

    def __init__(
        self,
        *,
        upgrade: UpgradeHook | None = None,
        open: OpenHook | None = None,
        message: MessageHook | None = None,
        close: CloseHook | None = None,
        error: ErrorHook | None = None,
    ) -> None:
        for name, hook in (
            ("upgrade", upgrade),
            ("open", open),
            ("message", message),
            ("close", close),
            ("error", error),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"hook {name!r} must be callable, not {type(hook).__name__}")
        self.upgrade = upgrade
        self.open = open
        self.message = message
        self.close = close
        self.error = error

    def __repr__(self) -> str:
        names = [n for n in HOOK_NAMES if getattr(self, n) is not None]
        return f"<Hooks {' '.join(names) or '(none)'}>"


def define_hooks(
    *,
    upgrade: UpgradeHook | None = None,
    open: OpenHook | None = None,
    message: MessageHook | None = None,
    close: CloseHook | None = None,
    error: ErrorHook | None = None,
) -> Hooks:
    """Bundle lifecycle hooks; each may be a plain or a coroutine function."""
    return Hooks(upgrade=upgrade, open=open, message=message, close=close, error=error)


#: What ``sse_adapter`` and ``resolve`` take as hooks. (Any object with hook
#: attributes is accepted at run time too, but only these type-check.)
HooksLike: TypeAlias = "Hooks | HooksDict"


def as_hooks(obj: object, what: str = "hooks") -> Hooks:
    """Normalise a ``Hooks``, a ``dict`` of hook names, or an object with hook
    attributes; refuse what is surely a mistake (a bare function, a class
    instead of an instance, an object with no hook at all)."""
    if isinstance(obj, Hooks):
        return obj
    if isinstance(obj, Mapping):
        unknown = [k for k in obj if k not in HOOK_NAMES]
        if unknown:
            raise TypeError(f"{what}: unknown hook name {unknown[0]!r}")
        return Hooks(**obj)
    if isinstance(obj, type):
        raise TypeError(
            f"{what}: got the class {obj.__name__}, not an instance of it (pass {obj.__name__}())"
        )
    if inspect.isroutine(obj):
        raise TypeError(
            f"{what}: got the function {getattr(obj, '__name__', obj)!r}; "
            "pass define_hooks(open=..., ...) or a dict of hook names"
        )
    found = {n: getattr(obj, n, None) for n in HOOK_NAMES}
    if all(hook is None for hook in found.values()):
        raise TypeError(
            f"{what}: {type(obj).__name__} has none of the hook attributes {HOOK_NAMES}"
        )
    return Hooks(**found)


async def invoke(hook: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async hook and return its result."""
    result = hook(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def sse_error(message: str, cause: BaseException) -> SSEError:
    """The ``SSEError`` the error hooks receive for ``cause``."""
    err = SSEError(f"{message}: {cause!r}")
    err.__cause__ = cause
    return err


async def run_error_hooks(hooks: tuple[Hooks, ...], peer: Peer | None, err: SSEError) -> None:
    """Run every ``error`` hook; a failing error hook is logged, never raised."""
    for h in hooks:
        if h.error is None:
            continue
        try:
            await invoke(h.error, peer, err)
        except Exception:
            logger.exception("error hook failed")


async def run_hooks(hooks: tuple[Hooks, ...], name: str, peer: Peer, *args: Any) -> bool:
    """Run hook ``name`` of every layer in order (global first, then resolved)
    with ``(peer, *args)``: crossws's ``callHook``.

    The one rule for a failing hook, whichever it is: it is logged at ERROR
    on the package logger and reported to the error hooks as an ``SSEError``
    ("<name> hook failed"), and the layers after it still run — each layer
    (say, a global audit hook and a per-route one) gets every event. Returns
    ``False`` when any of them failed.
    """
    ok = True
    for h in hooks:
        hook = getattr(h, name)
        if hook is None:
            continue
        try:
            await invoke(hook, peer, *args)
        except Exception as exc:
            ok = False
            logger.exception("%s hook failed for peer %s", name, peer.id)
            await run_error_hooks(hooks, peer, sse_error(f"{name} hook failed", exc))
    return ok


Resolver: TypeAlias = Callable[[web.Request], "HooksLike | None | Awaitable[HooksLike | None]"]


class Upgrade:
    """The merged outcome of the ``upgrade`` hooks of one request."""

    __slots__ = ("context", "headers", "namespace", "response")

    def __init__(self) -> None:
        self.headers: dict[str, str] | None = None
        self.context: dict[str, Any] | None = None
        self.namespace: str | None = None
        self.response: web.StreamResponse | None = None  # set: rejected

    def merge(self, result: object) -> None:
        if result is None:
            return
        if isinstance(result, web.StreamResponse):
            self.response = result
            return
        if not isinstance(result, Mapping):
            raise TypeError(
                "upgrade hook must return None, a dict or a web.StreamResponse, "
                f"not {type(result).__name__}"
            )
        for key, value in result.items():
            if key == "headers":
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise TypeError(f"upgrade hook: headers must be a mapping, not {value!r}")
                if self.headers is None:
                    self.headers = {}
                for name, v in value.items():
                    text = str(v)
                    if FORBIDDEN_IN_HEADER.search(str(name)) or FORBIDDEN_IN_HEADER.search(text):
                        raise ValueError(f"upgrade hook: header {name!r} has a control character")
                    self.headers[str(name)] = text
            elif key == "context":
                if value is None:
                    continue
                if not isinstance(value, dict):
                    raise TypeError(f"upgrade hook: context must be a dict, not {value!r}")
                if self.context is None:
                    self.context = value  # the very dict the hook returned
                else:
                    self.context.update(value)
            elif key == "namespace":
                if value is not None and not isinstance(value, str):
                    raise TypeError(f"upgrade hook: namespace must be a str, not {value!r}")
                if value is not None:
                    self.namespace = value
            else:
                raise TypeError(f"upgrade hook returned unknown key {key!r}")


async def run_upgrade(hooks: tuple[Hooks, ...], request: web.Request) -> Upgrade:
    """Run every ``upgrade`` hook in order (global first); stop at the first rejection.

    Raises ``SSEError`` (cause: the hook's exception) for a failing hook that
    did not reject with a response.
    """
    outcome = Upgrade()
    for h in hooks:
        if h.upgrade is None:
            continue
        try:
            outcome.merge(await invoke(h.upgrade, request))
        except web.HTTPException as exc:
            outcome.response = exc
        except Exception as exc:
            response = getattr(exc, "response", None)
            if not isinstance(response, web.StreamResponse):
                raise sse_error("upgrade hook failed", exc) from exc
            outcome.response = response
        if outcome.response is not None:
            break
    return outcome
