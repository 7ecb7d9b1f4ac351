"""The route table lookup: (method, path) -> handler, path parameter, route label, or 404/405.

The table is a dict like mlxd.api.routes.ROUTES: ``(method, path) -> handler``. A path ending in
"/" is a prefix (except "/" itself); the rest of a request path under it is the path parameter
(``ex.path_param``), and the longest prefix wins. A route on ``ANY_PATH`` answers every path no
other route has (the front end of --models passes those on to a model's worker).
A handler wrapped in ``Styled`` answers its errors in another API's shape (Anthropic's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from mlxd.transport.errors import NOT_FOUND, OPENAI_STYLE, ErrorStyle, HttpError

Handler = Callable[..., Awaitable[None]]
Routes = Mapping[tuple[str, str], Handler]
ANY_PATH = "*"  # RFC 9110's asterisk-form is OPTIONS-only, so no request path is ever this


@dataclass(frozen=True)
class Styled:
    """A handler whose errors (its own, and the server's refusals on its route: 401, 405...)
    take ``errors``'s shape. Called, and read, as the handler it wraps."""

    handler: Handler
    errors: ErrorStyle

    async def __call__(self, app, ex) -> None:
        await self.handler(app, ex)

    def __getattr__(self, name: str):
        """Anything else is the handler's own (its description for /openapi.json...)."""
        if name == "handler":  # not set yet (a copy in the making): no recursion
            raise AttributeError(name)
        return getattr(self.handler, name)


def error_style(handler: Handler | None) -> ErrorStyle:
    return handler.errors if isinstance(handler, Styled) else OPENAI_STYLE


class Routed(NamedTuple):
    """What a request path routed to: a handler to run, or the error to answer instead."""

    handler: Handler | None
    param: str  # the path parameter: the rest of the path under a prefix route
    label: str  # the route pattern ("/v1/models/{id}"), a metrics label
    error: HttpError | None
    errors: ErrorStyle = OPENAI_STYLE  # the shape errors on this route take


def _under_prefix(pattern: str, path: str) -> bool:
    # "/" alone is the root page, not a prefix of every path.
    return (
        pattern != "/"
        and pattern.endswith("/")
        and path.startswith(pattern)
        and len(path) > len(pattern)
    )


def handlers_for(routes: Routes, path: str) -> tuple[dict[str, Handler], str, str]:
    """({method: handler}, path parameter, route label) for ``path``; no handlers if no route.

    An exact path wins; otherwise the longest prefix route that ``path`` extends (with every
    method routed on it)."""
    exact = {m: h for (m, p), h in routes.items() if p == path}
    if exact:
        return exact, "", path
    prefixes = [p for (_m, p) in routes if _under_prefix(p, path)]
    if not prefixes:
        return {m: h for (m, p), h in routes.items() if p == ANY_PATH}, "", "other"
    prefix = max(prefixes, key=len)
    handlers = {m: h for (m, p), h in routes.items() if p == prefix}
    return handlers, path[len(prefix) :], prefix + "{id}"


def methods_for(routes: Routes, path: str) -> list[str]:
    """The methods routed on ``path``, sorted (for a CORS preflight)."""
    return sorted(handlers_for(routes, path)[0])


def route(routes: Routes, method: str, path: str, *, preflight: Handler | None = None) -> Routed:
    """The handler for ``method`` on ``path`` (HEAD runs GET's), or the 404/405 to answer.

    ``preflight``, when given, answers an OPTIONS on a known path that has no OPTIONS route."""
    handlers, param, label = handlers_for(routes, path)
    if not handlers:
        return Routed(
            None, "", "other", HttpError(404, NOT_FOUND, f"no route for {path}", code="not_found")
        )
    lookup = "GET" if method == "HEAD" else method
    if lookup in handlers:
        return Routed(handlers[lookup], param, label, None, error_style(handlers[lookup]))
    if method == "OPTIONS" and preflight is not None:
        return Routed(preflight, "", label, None)
    allowed = set(handlers) | ({"HEAD"} if "GET" in handlers else set())
    return Routed(
        None,
        "",
        label,
        HttpError(
            405,
            "invalid_request_error",
            f"{method} is not allowed on {path}",
            code="method_not_allowed",
            headers=(("Allow", ", ".join(sorted(allowed))),),
        ),
        error_style(next(iter(handlers.values()))),  # the path's API, whichever method
    )
