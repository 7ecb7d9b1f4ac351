"""The front end of ``--models``: its routes, and the request -> model -> worker step.

Any request that names a model goes to that model's worker unchanged (the JSON body's ``model``
field for a POST, ``?model=`` otherwise); requests about the models themselves (the list, health,
status, stats, metrics) and the admin routes are answered here, from the pool and the workers'
own answers. Handlers are ``async def handler(front, ex)``, as mlxd/api/app.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from dataclasses import dataclass, field

from mlxd import __version__
from mlxd.api.anthropic_messages.errors import ANTHROPIC_STYLE  # stdlib: no mlx
from mlxd.fleet import proxy, upstream
from mlxd.fleet.catalog import Catalog, CatalogError, ModelCard
from mlxd.fleet.pool import Pool
from mlxd.fleet.workers import Worker, process_rss
from mlxd.transport import metrics as prom
from mlxd.transport.errors import NOT_FOUND, HttpError, bad_request
from mlxd.transport.exchange import Exchange
from mlxd.transport.metrics import Metrics
from mlxd.transport.routing import ANY_PATH, Routes, Styled

FAN_OUT_METHODS = ("GET", "HEAD", "DELETE")  # safe to ask each loaded model in turn
ASK_TIMEOUT_S = 5.0  # a worker's status answer; one that takes longer is reported without it
DEFAULT_UNLOAD_TIMEOUT_S = 30.0  # /admin/unload waits this long for running requests


@dataclass
class Front:
    """What the front end's handlers share."""

    catalog: Catalog
    pool: Pool
    settings: dict  # budget and auto-configuration, for the status routes
    metrics: Metrics = field(default_factory=Metrics)
    started: float = field(default_factory=time.time)

    def card(self, name: str) -> ModelCard:
        card = self.catalog.find(name)
        if card is None:
            raise HttpError(
                404,
                NOT_FOUND,
                f"The model '{name}' does not exist; available: {', '.join(self.ids())}",
                param="model",
                code="model_not_found",
            )
        return card

    def ids(self) -> list[str]:
        return [card.id for card in self.catalog]

    def model_for(self, ex: Exchange) -> ModelCard:
        """The model a request names, or the only one there is."""
        name = requested_model(ex)
        if name is not None:
            return self.card(name)
        if len(self.catalog) == 1:
            return next(iter(self.catalog))
        where = "'model' in the JSON body" if ex.request.body else "?model=ID"
        raise bad_request(f"name the model ({where}); available: {', '.join(self.ids())}", "model")


def requested_model(ex: Exchange) -> str | None:
    head = ex.request.head
    if ex.request.body:
        try:
            body = json.loads(ex.request.body)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("the body is not valid JSON") from None
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and (not isinstance(model, str) or not model):
            raise bad_request("'model' must be a model id", "model")
        return model
    found = urllib.parse.parse_qs(head.query).get("model")
    return found[0] if found else None


# ----- to a worker -----


async def to_model(front: Front, ex: Exchange) -> None:
    """Any other route: to the worker of the model the request names. A read or a delete that
    names none (GET /v1/responses/{id}: a stored response lives in one worker) goes to each
    loaded model in turn, until one knows the path."""
    fan_out = ex.request.head.method in FAN_OUT_METHODS and len(front.catalog) > 1
    if fan_out and requested_model(ex) is None:
        await _first_that_knows(front, ex)
        return
    card = front.model_for(ex)
    async with front.pool.use(card) as worker:
        await proxy.forward(ex, worker)


async def _first_that_knows(front: Front, ex: Exchange) -> None:
    for w in [w for w in front.pool.all() if w.state == "ready"]:
        w.use()
        try:
            if await proxy.forward(ex, w, unless_404=True):
                return
        finally:
            w.release()
    path = ex.request.head.path
    raise HttpError(
        404,
        NOT_FOUND,
        f"no loaded model knows {path} (name one with ?model=ID; models: {', '.join(front.ids())})",
        code="not_found",
    )


# ----- the models -----


def model_card(front: Front, card: ModelCard) -> dict:
    w = front.pool.worker(card)
    out = {
        "id": card.id,
        "object": "model",
        "created": int(front.started),
        "owned_by": "mlxd",
        "loaded": w.state == "ready",
        "state": w.state,
    }
    if card.aliases:
        out["aliases"] = list(card.aliases)
    if card.settings.get("adapter"):
        out["adapter"] = card.settings["adapter"]
    return out


async def list_models(front: Front, ex: Exchange) -> None:
    with contextlib.suppress(CatalogError):  # models copied in since appear
        front.catalog.refresh()
    await ex.send_json(
        200, {"object": "list", "data": [model_card(front, c) for c in front.catalog]}
    )


async def get_model(front: Front, ex: Exchange) -> None:
    await ex.send_json(200, model_card(front, front.card(ex.path_param)))


async def health(front: Front, ex: Exchange) -> None:
    states = {w.id: w.state for w in front.pool.all()}
    await ex.send_json(
        200, {"status": "ok", "state": "ready", "version": __version__, "models": states}
    )


# ----- admin -----


async def _model_status(front: Front, w: Worker) -> dict:
    status = await proxy.ask(w, "/v1/mlx/status", ASK_TIMEOUT_S)
    queue = status.get("queue", {}) if isinstance(status, dict) else {}
    memory = status.get("memory", {}) if isinstance(status, dict) else {}
    now = time.monotonic()
    return {
        "id": w.id,
        "aliases": list(w.card.aliases),
        "path": w.card.path,
        "state": w.state,
        "pid": w.pid,
        "socket": w.socket,  # curl --unix-socket reaches the worker itself
        "memory": {"mlx_active_bytes": memory.get("active_bytes"), "rss_bytes": process_rss(w.pid)},
        "plan": w.plan.to_json(),
        "kv_budget_bytes": w.plan.kv_bytes,
        "loaded_since": w.loaded_since,
        "last_used_seconds_ago": round(now - w.last_used, 3),
        "requests": {
            "in_flight": w.in_flight,
            "waiting_for_load": w.waiting,
            "running_sequences": queue.get("running_sequences", 0),
            "waiting_requests": queue.get("waiting_requests", 0),
        },
        "idle_unload": front.pool.idle_limit(w),
        "loads": w.loads,
        "crashes_recent": len(w.crashes),
        "last_error": w.last_error,
    }


async def admin_status(front: Front, ex: Exchange) -> None:
    models = await asyncio.gather(*(_model_status(front, w) for w in front.pool.all()))
    await ex.send_json(
        200,
        {
            "version": __version__,
            "uptime_seconds": round(time.time() - front.started, 3),
            **front.settings,
            "models": list(models),
        },
    )


def _admin_body(front: Front, ex: Exchange) -> tuple[Worker, dict]:
    try:
        body = json.loads(ex.request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise bad_request('send {"model": ID}', "model")
    return front.pool.worker(front.card(body["model"])), body


async def admin_load(front: Front, ex: Exchange) -> None:
    w, _body = _admin_body(front, ex)
    await front.pool.ready(w, forced=True)
    await ex.send_json(200, await _model_status(front, w))


async def admin_unload(front: Front, ex: Exchange) -> None:
    w, body = _admin_body(front, ex)
    timeout = body.get("timeout", DEFAULT_UNLOAD_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise bad_request("'timeout' must be a number of seconds >= 0", "timeout")
    await ex.send_json(200, await front.pool.unload(w, float(timeout)))


# ----- stats, per model -----


async def queue_stats(front: Front, ex: Exchange) -> None:
    workers = front.pool.all()
    answers = await proxy.ask_all(workers, "/v1/queue/stats", ASK_TIMEOUT_S)
    models = {}
    for w, answer in zip(workers, answers, strict=True):
        queue = answer["models"].get(w.id, {}) if isinstance(answer, dict) else {}
        models[w.id] = {
            **queue,
            "state": w.state,
            "in_flight": w.in_flight,
            "waiting_for_load": w.waiting,
        }
    await ex.send_json(200, {"models": models})


async def stats(front: Front, ex: Exchange) -> None:
    workers = front.pool.all()
    answers = await proxy.ask_all(workers, "/stats", ASK_TIMEOUT_S)
    models = {
        w.id: {"state": w.state, **(a if isinstance(a, dict) else {})}
        for w, a in zip(workers, answers, strict=True)
    }
    await ex.send_json(200, {**front.metrics.stats(), "models": models})


async def mlx_status(front: Front, ex: Exchange) -> None:
    workers = front.pool.all()
    answers = await proxy.ask_all(workers, "/v1/mlx/status", ASK_TIMEOUT_S)
    await ex.send_json(
        200,
        {
            "version": __version__,
            "uptime_seconds": round(time.time() - front.started, 3),
            **front.settings,
            "models": {
                w.id: answer or {"state": w.state}
                for w, answer in zip(workers, answers, strict=True)
            },
        },
    )


def _model_gauges(front: Front) -> str:
    lines = []
    series = (
        (
            "mlxd_model_loaded",
            "gauge",
            "1 while the model's worker is ready.",
            lambda w: int(w.state == "ready"),
        ),
        (
            "mlxd_model_in_flight",
            "gauge",
            "Requests the front end is proxying to the model.",
            lambda w: w.in_flight,
        ),
        (
            "mlxd_model_loads_total",
            "counter",
            "Times the model's worker became ready.",
            lambda w: w.loads,
        ),
    )
    for name, kind, help_text, value in series:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [prom.with_label(f"{name} {value(w)}", "model", w.id) for w in front.pool.all()]
    return "\n".join(lines) + "\n"


async def metrics(front: Front, ex: Exchange) -> None:
    workers = [w for w in front.pool.all() if w.state == "ready"]
    texts = await asyncio.gather(
        *(upstream.get_text(w.socket, "/metrics", ASK_TIMEOUT_S) for w in workers)
    )
    own = front.metrics.exposition(
        {"mlxd_uptime_seconds": ("Seconds since start.", time.time() - front.started)}
    )
    parts: list[tuple[str | None, str]] = [(None, own), (None, _model_gauges(front))]
    parts += [(w.id, text) for w, text in zip(workers, texts, strict=True) if text]
    await ex.send(200, prom.merge(parts).encode(), prom.CONTENT_TYPE)


# (method, path) -> handler. ANY_PATH catches every other route: it goes to the worker of the
# model the request names.
ROUTES: Routes = {
    ("GET", "/v1/models"): list_models,
    ("GET", "/v1/models/"): get_model,
    ("GET", "/health"): health,
    ("GET", "/v1/mlx/status"): mlx_status,
    ("GET", "/stats"): stats,
    ("GET", "/v1/queue/stats"): queue_stats,
    ("GET", "/metrics"): metrics,
    ("GET", "/admin/status"): admin_status,
    ("POST", "/admin/load"): admin_load,
    ("POST", "/admin/unload"): admin_unload,
    # Anthropic's routes: the front end's own errors (unknown model, busy...) in its shape too.
    ("POST", "/v1/messages"): Styled(to_model, ANTHROPIC_STYLE),
    ("POST", "/v1/messages/count_tokens"): Styled(to_model, ANTHROPIC_STYLE),
    **{(method, ANY_PATH): to_model for method in ("GET", "POST", "PUT", "PATCH", "DELETE")},
}
PUBLIC_PATHS = frozenset({"/health", "/metrics"})
