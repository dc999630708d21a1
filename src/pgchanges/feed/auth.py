"""Who may read the feed, and what each principal may see: written in Python by the application.

* ``authorize(request) -> principal | None`` (plain or ``async``) runs once per request, with the Starlette
  ``Request``: None answers 401, raising :class:`Forbidden` answers 403. The default is
  :class:`BearerTokens`: ``Authorization: Bearer TOKEN``, or ``?access_token=TOKEN`` for browsers, whose
  ``EventSource`` cannot set headers. Tokens are compared in constant time and never logged.
* ``allow(principal, change) -> bool`` runs before a change is sent: a change it refuses (or that it raises
  on) reaches no client of that principal. It runs once per change per *view* (clients with the same
  principal and request share one; :mod:`pgchanges.feed.fanout`), so a principal should be a hashable value
  (a user id, a tuple of roles); an unhashable one gets a view per client.
* ``hide(principal, table) -> columns`` names the columns a principal must not see in ``table``
  (``"public.orders"``); they are removed from ``new``, ``old``, ``changed`` and ``types``. Asked once per
  view and table.
"""

from __future__ import annotations

import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pgchanges.change import Change

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger("pgchanges.feed")

Authorize = Callable[["Request"], Any]
Allow = Callable[[Any, Change], bool]
Hide = Callable[[Any, str], Iterable[str] | None]


class Forbidden(Exception):
    """Raised by ``authorize`` for a client that is known but may not read the feed (answered 403)."""


class BearerTokens:
    """``authorize`` from a mapping of bearer token → principal."""

    def __init__(self, tokens: Mapping[str, Any]) -> None:
        self._tokens = [(token.encode(), principal) for token, principal in tokens.items() if token]

    def __call__(self, request: Request) -> Any:
        given = bearer_token(request)
        if given is None:
            return None
        found = None
        for token, principal in self._tokens:  # every token compared, found or not: no timing tells which
            if hmac.compare_digest(token, given.encode()):
                found = principal
        return found


def bearer_token(request: Request) -> str | None:
    """The token of ``Authorization: Bearer …``, else of ``?access_token=…``."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("access_token") or None


def anyone(request: Request) -> Any:
    """``authorize`` of an open feed (``open=True``): every client is the principal ``"anyone"``."""
    return "anyone"


async def principal_of(authorize: Authorize, request: Request) -> Any:
    found = authorize(request)
    if inspect.isawaitable(found):
        found = await found
    return found


def principal_key(principal: Any) -> Any:
    """What views are grouped by: the principal when hashable, else the object itself (one view per client)."""
    try:
        hash(principal)
    except TypeError:
        return ("unhashable", id(principal))
    return (type(principal).__name__, principal)


def allowed(allow: Allow | None, principal: Any, change: Change) -> bool:
    """``allow``'s verdict; a raising ``allow`` refuses (and says so in the log, without the row)."""
    if allow is None:
        return True
    try:
        return bool(allow(principal, change))
    except Exception as exc:
        log.error("feed: allow() raised %s for change %s; not sent", type(exc).__name__, change.id)
        return False


def hidden_columns(hide: Hide | None, principal: Any, table: str) -> frozenset[str]:
    if hide is None:
        return frozenset()
    found = hide(principal, table)
    return frozenset() if found is None else frozenset(found)


def without_columns(change: Change, hidden: Collection[str]) -> bytes:
    """The change's JSON without the ``hidden`` columns."""
    import json  # noqa: PLC0415 - only views with hidden columns re-encode

    data = change.to_dict()
    for part in ("new", "old"):
        row = data.get(part)
        if row is not None:
            data[part] = {k: v for k, v in row.items() if k not in hidden}
    data["changed"] = [c for c in data["changed"] if c not in hidden]
    types = data.get("types")
    if types:
        data["types"] = {part: {k: v for k, v in tags.items() if k not in hidden} for part, tags in types.items()}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def check_hook(name: str, hook: Callable[..., Awaitable[Any] | Any] | None) -> None:
    if hook is not None and not callable(hook):
        raise TypeError(f"{name} must be callable, not {type(hook).__name__}")
