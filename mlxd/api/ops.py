"""Operational routes: the model list, health, status, stats and Prometheus metrics."""

from __future__ import annotations

from mlxd import __version__
from mlxd.api.app import NOT_READY_RETRY_AFTER_S, App
from mlxd.api.openapi import operation
from mlxd.api.reports import gauges, queue_state, status_report
from mlxd.transport.errors import NOT_FOUND, HttpError
from mlxd.transport.metrics import CONTENT_TYPE as METRICS_TYPE


def model_card(app: App) -> dict:
    card = {"id": app.name, "object": "model", "created": int(app.started), "owned_by": "mlxd"}
    if app.loaded is not None:
        card["capabilities"] = app.loaded.capabilities
    if app.loaded is not None and app.loaded.adapter is not None:
        card["adapter"] = app.loaded.adapter
    return card


@operation("List the served model")
async def list_models(app: App, ex) -> None:
    await ex.send_json(200, {"object": "list", "data": [model_card(app)]})


@operation("Describe the served model", path="/v1/models/{id}")
async def get_model(app: App, ex) -> None:
    model_id = ex.path_param
    if model_id != app.name:
        raise HttpError(
            404,
            NOT_FOUND,
            f"The model '{model_id}' does not exist",
            param="model",
            code="model_not_found",
        )
    await ex.send_json(200, model_card(app))


@operation("Health: 200 once the model is ready (or unloaded when idle), 503 while it loads")
async def health(app: App, ex) -> None:
    ok = app.ready or app.unloaded  # unloaded by --idle-unload: the next request loads it
    body: dict[str, object] = {
        "status": "ok" if ok else "loading",
        "state": app.state,
        "model": app.name,
        "version": __version__,
    }
    headers: tuple[tuple[str, str], ...] = ()
    if app.group is not None:
        body["group"] = app.group.view()
    if app.failure:  # no Retry-After: this process will not recover, its supervisor restarts it
        body.update(status="failed", reason=app.failure)
    elif not ok:
        headers = (("Retry-After", NOT_READY_RETRY_AFTER_S),)
    await ex.send_json(200 if ok else 503, body, headers)


@operation("Model, device, memory, uptime and queue")
async def mlx_status(app: App, ex) -> None:
    await ex.send_json(200, status_report(app))


@operation("Running and waiting requests, token totals and rates, errors")
async def stats(app: App, ex) -> None:
    await ex.send_json(200, {**app.metrics.stats(), **queue_state(app)})


@operation("Running and waiting requests of each model (one here; --models serves several)")
async def queue_stats(app: App, ex) -> None:
    await ex.send_json(200, {"models": {app.name: {"state": app.state, **queue_state(app)}}})


@operation("Prometheus metrics", content_type="text/plain")
async def metrics(app: App, ex) -> None:
    await ex.send(200, app.metrics.exposition(gauges(app)).encode(), METRICS_TYPE)
