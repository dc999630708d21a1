"""The HTTP/SSE change feed: changes to browsers and services, resumable, authorized, from one capture.

``app.feed("public.orders", tokens={...})`` (or ``pgchanges feed public.orders --http :8080``) serves
``GET /v1/changes`` (a JSON page, or ``live=sse``) on the App's ``--http`` server; ``feed.asgi()`` mounts the
same in a Starlette or FastAPI application. docs/feed.md is the user's guide. The modules, bottom up:

* :mod:`~pgchanges.feed.offsets`: keys from the source position, and the tokens clients keep;
* :mod:`~pgchanges.feed.log`: the retained log (bounded, ordered, one for all clients);
* :mod:`~pgchanges.feed.window`: the log's window on disk, for resuming across restarts;
* :mod:`~pgchanges.feed.filters`: ``table=`` and ``where=``; :mod:`~pgchanges.feed.auth`: who may read what;
* :mod:`~pgchanges.feed.fanout`: views and clients; :mod:`~pgchanges.feed.sse`: the event format;
* :mod:`~pgchanges.feed.hub`: :class:`Feed`, the capture and lifecycle; :mod:`~pgchanges.feed.asgi`: the
  Starlette app (the ``feed`` extra).
"""

from pgchanges.feed.auth import BearerTokens, Forbidden, bearer_token
from pgchanges.feed.hub import Expired, Feed
from pgchanges.feed.log import Retention

__all__ = ["BearerTokens", "Expired", "Feed", "Forbidden", "Retention", "bearer_token"]
