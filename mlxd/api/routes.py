"""The route table: ``(method, path) -> handler``. A path ending in "/" is a prefix whose rest is
``ex.path_param``; a method missing for a known path is a 405 (mlxd/transport/routing.py)."""

from __future__ import annotations

from mlxd.api.app import chat_completions, completions
from mlxd.api.index import index
from mlxd.api.ops import get_model, health, list_models, metrics, mlx_status, stats

ROUTES = {
    ("GET", "/"): index,
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/models/"): get_model,
    ("GET", "/v1/mlx/status"): mlx_status,
    ("GET", "/health"): health,
    ("GET", "/stats"): stats,
    ("GET", "/metrics"): metrics,
}
# Answered without an API key unless --auth-health (probes and scrapers rarely carry one; the
# index only says what /health says, and where to go).
PUBLIC_PATHS = frozenset({"/", "/health", "/metrics"})
# Logged at DEBUG, not INFO: a load balancer, a scraper or `mlxd --status` asks every so often.
QUIET_PATHS = frozenset({"/health", "/metrics", "/stats"})
