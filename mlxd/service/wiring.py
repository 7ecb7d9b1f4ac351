"""From ``Config`` to each layer's own settings: the API's ``App``, the transport's ``Server``,
the engine's ``EngineSettings`` (the auto ones chosen for this device and model, engine/tuning.py)
and the weights it serves under ``--weights`` (models/weights.py). run.py calls these in order;
a group's followers (follower.py) and ``--print-config`` (cli.py) call them too.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from mlxd.api.app import App, Defaults
from mlxd.api.images import ImageLimits
from mlxd.api.responses.store import ResponseStore
from mlxd.api.routes import PUBLIC_PATHS, QUIET_PATHS, ROUTES
from mlxd.engine import tuning
from mlxd.engine.settings import EngineSettings
from mlxd.models import device, loader, units, weights
from mlxd.service.config import Config
from mlxd.service.residency import Residency
from mlxd.service.startup import Startup
from mlxd.transport.routing import Routes
from mlxd.transport.server import Server, ServerSettings

log = logging.getLogger(__name__)


def app_for(config: Config) -> App:
    """The API layer's App: request defaults, limits and the Responses store from ``config``."""
    assert config.model is not None  # the command line refuses to serve without one
    return App(
        name=config.served_model_name or loader.served_name(config.model or ""),
        defaults=Defaults(
            config.max_tokens, config.temperature, config.top_p, config.reasoning_format
        ),
        request_timeout=config.request_timeout,
        image_limits=ImageLimits(
            config.max_images,
            config.max_image_bytes,
            config.max_image_pixels,
            config.allow_image_files,
            config.allow_image_urls,
            config.image_url_timeout,
        ),
        responses=ResponseStore(config.responses_store_bytes),
    )


def server_for(config: Config, app: App, residency: Residency | None) -> Server:
    """The transport layer's server: body limit, access control and the route table."""
    settings = ServerSettings(
        max_body_bytes=config.max_body_bytes,
        api_keys=config.api_keys,
        auth_health=config.auth_health,
        cors_origins=config.cors_origins,
    )
    routes: Routes = ROUTES
    if residency is not None:  # the model routes (POST) load an unloaded model first
        routes = {k: residency.guard(h) if k[0] == "POST" else h for k, h in ROUTES.items()}
    return Server(
        app,
        routes,
        settings,
        public_paths=PUBLIC_PATHS,
        quiet_paths=QUIET_PATHS,
        metrics=app.metrics,
    )


def _scheduling(config: Config, facts: tuning.ModelFacts | None) -> tuning.Scheduling:
    return tuning.choose(
        device.device_facts(),
        facts,
        max_batch_size=config.max_batch_size,
        prefill_step_size=config.prefill_step_size,
    )


def auto_settings(config: Config) -> dict:
    """What the auto settings come to on this machine for ``config.model`` (--print-config)."""
    try:
        facts = tuning.file_facts(config.model) if config.model else None
    except ValueError as exc:
        return {"error": str(exc)}
    chosen = _scheduling(config, facts)
    return {
        "device": dataclasses.asdict(device.device_facts()),
        "max_batch_size": chosen.max_batch_size,
        "prefill_step_size": chosen.prefill_step_size,
        "max_step_tokens": config.max_step_tokens or "adaptive (see --help)",
        "memory_share": chosen.memory_share,
        "why": list(chosen.reasons),
    }


def engine_settings(
    config: Config, calibration_file: Path | None, loaded: loader.LoadedModel, model
) -> EngineSettings:
    """The engine's settings: the auto ones chosen for this device and model (rank 0 and each
    follower of a group alike; the group then agrees on them, engine/group.py)."""
    chosen = _scheduling(config, tuning.loaded_facts(model, loaded.config, loaded.context_length))
    for reason in chosen.reasons:
        log.info("auto: %s", reason)
    kv_budget = device.kv_budget(
        config.memory_limit, config.prompt_cache_bytes, chosen.memory_share
    )
    log.info(
        "memory: %s for KV caches of running requests (prompt cache up to %s)",
        units.human(kv_budget),
        units.human(config.prompt_cache_bytes),
    )
    return EngineSettings(
        max_batch_size=chosen.max_batch_size,
        queue_size=config.queue_size,
        queue_timeout=config.queue_timeout,
        prefill_step_size=chosen.prefill_step_size,
        prefill_batch_size=config.prefill_batch_size,
        max_step_tokens=config.max_step_tokens,
        prompt_cache_bytes=config.prompt_cache_bytes,
        kv_budget_bytes=kv_budget,
        weights=config.weights,
        calibrate=config.calibrate,
        warm_up=config.warm_up,
        calibration_file=str(calibration_file) if calibration_file else None,
        kv_bits=config.kv_bits,
        quantized_kv_start=config.quantized_kv_start,
    )


def weights_for(model, config: Config, startup: Startup) -> tuple[object, Path | None]:
    """The model to serve under ``--weights``, and where its calibration is kept. A kept
    calibration that found the dense copy never wins is read first, so no dense copy is built
    only to be dropped (1.6-2.9 s for SmolLM2 on a 2-core CPU)."""
    if config.weights == "quantized" or not weights.is_quantized(model):
        return model, None
    try:  # keyed by the batch limit as configured (0: auto, which resolves alike each start)
        kept = weights.RoutingStore.default().path(str(config.model), config.max_batch_size or 0)
    except OSError as exc:
        log.warning("calibration will not be kept: %s", exc)
        kept = None
    routing = weights.RoutingStore.load(kept) if kept is not None else None
    if config.weights == "auto" and routing is not None and not routing.uses_dense:
        how = f"kept in {kept}, no dense copy built; delete it to measure again"
        weights.log_routing(routing, how)
        return model, None
    policy = config.weights
    if policy == "auto" and routing is not None and routing.uses_dense:
        policy = "both"  # measured here before: kept even on a CPU (where auto serves quantized)
    served = weights.prepare(
        model,
        policy,
        on_copy=lambda: startup.phase("dense copy"),
        memory_limit=config.memory_limit,  # a worker of --models: its share
    )
    return served, kept if isinstance(served, weights.DualModel) else None
