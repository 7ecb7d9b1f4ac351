"""``GET /``: where to go from here. A browser gets a small page of links; anything else a JSON
object naming the same routes (what `curl http://127.0.0.1:8000/` shows a new user)."""

from __future__ import annotations

import html

from mlxd import __version__
from mlxd.api.openapi import operation

# (path, what it is), in the order a new user wants them.
LINKS = (
    ("/docs", "the API: every route and field, with a form to try each"),
    ("/v1/models", "the model served (OpenAI's models list)"),
    ("/health", "200 once the model is ready, 503 while it loads"),
    ("/v1/mlx/status", "model, device, memory, queue"),
    ("/stats", "requests, tokens, tokens per second"),
    ("/metrics", "Prometheus metrics"),
    ("/openapi.json", "the API as OpenAPI 3.1"),
)
# Beyond /docs, the documentation ships beside the executable and in the source tree.
DOCS = (
    "/docs (the API), README.md (section API) and docs/SERVICE.md, in the source tree and the "
    "release folder"
)
HTML_TYPE = "text/html; charset=utf-8"


def wants_html(accept: str | None) -> bool:
    """Browsers put text/html first in Accept; curl sends */* and the SDK application/json."""
    return accept is not None and "text/html" in accept.split(",")[0]


def as_json(model: str, ready: bool) -> dict:
    return {
        "object": "mlxd",
        "version": __version__,
        "model": model,
        "ready": ready,
        "docs": DOCS,
        "routes": {path: what for path, what in LINKS}
        | {
            "POST /v1/chat/completions": "chat",
            "POST /v1/completions": "text completion",
            "POST /v1/responses": "OpenAI's Responses API",
            "POST /v1/messages": "Anthropic's Messages API (Claude Code)",
            "POST /tokenize": "a text or a chat as token ids (POST /detokenize: back)",
        },
    }


def as_html(model: str, ready: bool) -> bytes:
    items = "".join(
        f'<li><a href="{path}">{path}</a>: {html.escape(what)}</li>' for path, what in LINKS
    )
    state = "ready" if ready else "loading"
    page = (
        f"<!doctype html><meta charset=utf-8><title>mlxd</title>"
        f"<h1>mlxd {__version__}</h1><p>Serving <b>{html.escape(model)}</b> ({state}) with an "
        f"OpenAI-compatible API at <code>/v1</code>: POST /v1/chat/completions, "
        f"POST /v1/completions, POST /v1/responses; Anthropic's at POST /v1/messages."
        f"</p><ul>{items}</ul>"
        f"<p>Documentation: {html.escape(DOCS)}.</p>"
    )
    return page.encode()


@operation("Where to go from here: a page for a browser, JSON otherwise")
async def index(app, ex) -> None:
    """``GET /``: a page for a browser, JSON for anything else."""
    if wants_html(ex.request.head.header("accept")):
        await ex.send(200, as_html(app.name, app.ready), HTML_TYPE)
    else:
        await ex.send_json(200, as_json(app.name, app.ready))
