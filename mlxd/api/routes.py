"""The route table: ``(method, path) -> handler``. A path ending in "/" is a prefix whose rest is
``ex.path_param``; a method missing for a known path is a 405 (mlxd/transport/routing.py).

The two routes that describe the API live here, beside the table they are generated from."""

from __future__ import annotations

from mlxd import __version__
from mlxd.api.anthropic_messages.errors import ANTHROPIC_STYLE
from mlxd.api.anthropic_messages.routes import count_tokens, create_message
from mlxd.api.app import App, chat_completions, completions
from mlxd.api.index import index
from mlxd.api.openapi import HTML_TYPE, build_spec, docs_page, operation
from mlxd.api.ops import get_model, health, list_models, metrics, mlx_status, queue_stats, stats
from mlxd.api.responses import handlers as responses
from mlxd.api.tokenize import detokenize, tokenize
from mlxd.transport.routing import Routes, Styled


@operation("This OpenAPI 3.1 description of every route")
async def openapi_json(app: App, ex) -> None:
    await ex.send_json(200, build_spec(ROUTES, __version__))


@operation("A page to read the API and try requests", content_type="text/html")
async def docs(app: App, ex) -> None:
    await ex.send(200, docs_page(), HTML_TYPE)


ROUTES: Routes = {
    ("GET", "/"): index,
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("POST", "/v1/responses"): responses.create_response,
    ("POST", "/v1/responses/input_tokens"): responses.input_tokens,
    ("GET", "/v1/responses/"): responses.get_response,
    ("DELETE", "/v1/responses/"): responses.delete_response,
    ("POST", "/v1/messages"): Styled(create_message, ANTHROPIC_STYLE),
    ("POST", "/v1/messages/count_tokens"): Styled(count_tokens, ANTHROPIC_STYLE),
    ("POST", "/tokenize"): tokenize,
    ("POST", "/detokenize"): detokenize,
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/models/"): get_model,
    ("GET", "/v1/mlx/status"): mlx_status,
    ("GET", "/health"): health,
    ("GET", "/stats"): stats,
    ("GET", "/v1/queue/stats"): queue_stats,
    ("GET", "/metrics"): metrics,
    ("GET", "/openapi.json"): openapi_json,
    ("GET", "/docs"): docs,
}
# Answered without an API key unless --auth-health (probes and scrapers rarely carry one; the
# index only says what /health says, and where to go; a browser opening /docs cannot send one,
# and the API's description is no secret).
PUBLIC_PATHS = frozenset({"/", "/health", "/metrics", "/docs", "/openapi.json"})
# Logged at DEBUG, not INFO: a load balancer, a scraper or `mlxd --status` asks every so often.
QUIET_PATHS = frozenset({"/health", "/metrics", "/stats"})
