"""The effective configuration: one frozen record from defaults < config file < env < CLI.

One table, ``OPTIONS``, names every setting once: its ``Config`` field, its long flag (which is
also its config-file key and, upper-cased, its ``MLXD_`` environment variable) and its parser.
Parsers take a string (CLI, env) or a JSON value (file) and raise ``ValueError`` with a message
that starts with the offending value; callers prefix where it came from.
Stdlib only: ``mlxd --stop`` and ``--print-config`` must answer without importing mlx.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlxd.models.locate import HUB_ID
from mlxd.service import modelspec
from mlxd.service.options import (
    ENV_PREFIX,
    IDLE_NEVER,
    Option,
    auto,
    boolean,
    choice,
    idle_seconds,
    integer,
    number,
    one_of,
    optional,
    size,
    text,
    text_list,
)
from mlxd.service.ranks import BACKENDS

DEFAULT_HOST = "127.0.0.1"  # local by default: nothing listens beyond this machine unasked
DEFAULT_PORT = 8000
DEFAULT_MAX_TOKENS = 512  # when a request names no max_tokens (capped by the context)
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 1.0
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024  # a long chat history is well under this
DEFAULT_QUEUE_SIZE = 64  # requests waiting for the engine before new ones are refused
# A bare engine's (tests, tools); the service resolves "auto" per device (engine/tuning.py).
DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_PREFILL_STEP = 512  # prompt tokens per sequence per engine step: streams keep flowing
DEFAULT_PROMPT_CACHE_BYTES = 512 * 1024**2
# Images (vision-language models; mlxd/api/images.py). OpenAI takes up to 500 images and 50 MB
# per request; a local server's memory is the tighter bound, so fewer and smaller by default.
DEFAULT_MAX_IMAGES = 8  # image parts per request
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024**2  # encoded bytes per image (OpenAI's per-image limit)
DEFAULT_MAX_IMAGE_PIXELS = 6000 * 6000  # width x height, read from the header before decoding
DEFAULT_IMAGE_URL_TIMEOUT_S = 10.0  # a remote image must arrive whole within this
# Stored Responses (store: true) for previous_response_id and GET: a long agent conversation's
# items are some 100 KB of JSON, so hundreds of turns fit; least recently used out.
DEFAULT_RESPONSES_STORE_BYTES = 64 * 1024**2
WEIGHT_POLICIES = ("auto", "quantized", "dense", "both")
CALIBRATE_WHEN = ("idle", "start")  # see mlxd/engine/calibration.py
KV_BITS = (4, 8)  # of what mx.quantize offers, the widths that keep keys and values useful
# thinking models: auto/deepseek split the thinking into reasoning_content (mlxd/api/reasoning.py)
REASONING_FORMATS = ("auto", "deepseek", "none")
DEFAULT_REASONING_FORMAT = "auto"
# With --backend: how long one engine step (or an idle heartbeat) may take before the group counts
# as lost; a long prefill chunk of a large model on a slow device must fit well within it.
DEFAULT_STEP_TIMEOUT_S = 60.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
ENV_ALIAS_PREFIX = "MLX_SERVER_"  # the seed server's names; MLXD_* wins when both are set
ENV_CONFIG = ENV_PREFIX + "CONFIG"
ENV_NOT_SETTINGS = {ENV_CONFIG, "MLXD_BUNDLE"}  # MLXD_BUNDLE: spec/mlxd.spec's build switch
MASK = "***"


class ConfigError(Exception):
    """A setting is unknown or malformed; the message names the setting and its source."""


@dataclass(frozen=True)
class Config:
    model: str | None = None
    adapter: str | None = None  # LoRA adapter directory (mlx-lm's format)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    reasoning_format: str = DEFAULT_REASONING_FORMAT  # "none": thinking stays in content
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    served_model_name: str | None = None  # the id in /v1/models; default from MODEL's name
    # Access control (enforced in transport/access.py).
    api_keys: tuple[str, ...] = ()
    api_key_file: str | None = None  # already merged into api_keys
    auth_health: bool = False  # require the key on /health and /metrics too
    cors_origins: tuple[str, ...] = ()
    # Scheduling (reserved for the engine). None in an "auto" setting: chosen at start from the
    # device and the model (engine/tuning.py, engine/schedule.py).
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_batch_size: int | None = None
    queue_timeout: float | None = None
    prefill_step_size: int | None = None
    prefill_batch_size: int | None = None
    max_step_tokens: int | None = None  # None: adaptive
    prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES
    responses_store_bytes: int = DEFAULT_RESPONSES_STORE_BYTES
    memory_limit: int | None = None  # bytes for model + KV; None: from the device
    weights: str = "auto"  # quantized / dense twin / both, per step
    calibrate: str = "idle"  # when the weight routing is measured
    kv_bits: int | None = None  # quantized KV cache (engine/kvcache.py); None: full precision
    quantized_kv_start: int = 0  # tokens a sequence keeps in full precision before that
    request_timeout: float | None = None
    # Images (vision-language models).
    max_images: int = DEFAULT_MAX_IMAGES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    allow_image_files: str | None = None  # a directory local image paths must resolve inside
    allow_image_urls: bool = False  # fetch http(s) image URLs (off: no network is assumed)
    image_url_timeout: float = DEFAULT_IMAGE_URL_TIMEOUT_S
    # One model across several processes (docs/DISTRIBUTED.md).
    backend: str | None = None  # ring, jaccl, mpi or nccl: this process is one rank of a group
    pipeline: bool = False  # split layers across ranks instead of splitting each layer
    distributed: str | None = None  # run this command on every rank through mlx.launch
    step_timeout: float = DEFAULT_STEP_TIMEOUT_S
    # Life cycle and logs.
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    log_level: str = "info"
    log_file: str | None = None
    log_format: str = "text"
    pid_file: str | None = None  # None: no PID file ("{port}" is the bound port)
    daemon: bool = False
    idle_unload: float = IDLE_NEVER  # seconds without requests before unloading; 0: at once
    unix_socket: str | None = None  # listen here instead of host:port (a --models worker)
    # Several models (--models): the front end, its workers and their capacity.
    models: tuple[modelspec.Source, ...] = ()  # empty: one model, MODEL
    preload: tuple[str, ...] = ()
    max_loaded: int | None = None  # None: as many as the memory budget holds
    memory_budget: int | None = None  # None: auto (service/autoconf.py)
    admin_keys: tuple[str, ...] = ()  # empty: the admin routes take the API keys

    def to_json(self) -> dict:
        """The configuration as JSON, API keys masked, auto settings as "auto" (for
        ``--print-config``)."""
        out = dataclasses.asdict(self)
        out["api_keys"] = [MASK] * len(self.api_keys)
        out["admin_keys"] = [MASK] * len(self.admin_keys)
        out["cors_origins"] = list(self.cors_origins)
        for opt in OPTIONS:
            if out[opt.field] is None and getattr(opt.parse, "unset_word", None) == "auto":
                out[opt.field] = "auto"
        return out


OPTIONS = (
    Option(
        "model",
        "model",
        text,
        "MLX model directory, GGUF file, or a hub id (ORG/NAME) in the local Hugging Face "
        "cache or LM Studio's models",
        is_path=True,
    ),
    Option(
        "adapter",
        "adapter",
        text,
        "LoRA adapter directory trained with mlx-lm "
        "(adapter_config.json, adapters.safetensors), applied at load",
        metavar="PATH",
        is_path=True,
    ),
    Option("host", "host", text, "address to bind (default %(default)s)"),
    Option("port", "port", integer(0, 65535), "port (default %(default)s; 0 picks a free one)"),
    Option(
        "max_tokens",
        "max-tokens",
        integer(1),
        "completion length when a request names none (default %(default)s)",
        metavar="N",
    ),
    Option(
        "temperature",
        "temperature",
        number(0.0, 2.0),
        "sampling temperature when a request names none (default %(default)s)",
        metavar="T",
    ),
    Option(
        "top_p",
        "top-p",
        number(0.0, 1.0),
        "nucleus sampling when a request names none (default %(default)s)",
        metavar="P",
    ),
    Option(
        "reasoning_format",
        "reasoning-format",
        choice(REASONING_FORMATS),
        "thinking models: auto/deepseek split the thinking into reasoning_content, none "
        "leaves it in content (default %(default)s)",
        metavar="FORMAT",
    ),
    Option(
        "max_body_bytes",
        "max-body-bytes",
        integer(1),
        "largest request body accepted (default %(default)s)",
        metavar="BYTES",
    ),
    Option(
        "served_model_name",
        "served-model-name",
        text,
        "model id clients see in /v1/models (default: MODEL's file or directory name)",
        metavar="NAME",
    ),
    Option("api_keys", "api-key", text_list, "require this bearer key (repeatable)", "list", "KEY"),
    Option(
        "api_key_file",
        "api-key-file",
        text,
        "file of API keys, one per line (merged with --api-key)",
        metavar="PATH",
        is_path=True,
    ),
    Option(
        "auth_health", "auth-health", boolean, "require the key on /health and /metrics too", "bool"
    ),
    Option(
        "cors_origins",
        "cors-origins",
        text_list,
        "allowed CORS origins, comma-separated or repeated ('*' for any)",
        "list",
        "ORIGINS",
    ),
    Option(
        "queue_size",
        "queue-size",
        integer(1),
        "requests waiting for the engine before new ones are refused (default %(default)s)",
        metavar="N",
    ),
    Option(
        "max_batch_size",
        "max-batch-size",
        auto(integer(1)),
        "most requests generated together; 'auto' (the default) picks it from the device and "
        "the model: 8 on a CPU, on a GPU as many streams of 4096 tokens as its memory holds "
        "(8-128), logged at start",
        metavar="N|auto",
    ),
    Option(
        "queue_timeout",
        "queue-timeout",
        optional(number(0.0, above=True)),
        "seconds a request may wait in the queue (default: no limit)",
        metavar="S",
    ),
    Option(
        "prefill_step_size",
        "prefill-step-size",
        auto(integer(1)),
        "most prompt tokens prefilled per sequence in one step; 'auto' (the default): 512 on "
        "a CPU, 1024 on a GPU",
        metavar="N|auto",
    ),
    Option(
        "prefill_batch_size",
        "prefill-batch-size",
        auto(integer(1)),
        "new prompts prefilled together in one step; 'auto' (the default) takes as many as "
        "the step's token budget holds (--max-step-tokens), up to --max-batch-size",
        metavar="N|auto",
    ),
    Option(
        "max_step_tokens",
        "max-step-tokens",
        auto(integer(16)),
        "tokens one engine step may compute, decoding streams and prompt chunks together "
        "(chunked prefill: long prompts are cut to fit beside running streams); 'auto' (the "
        "default) adapts the prompt share so a step that prefills takes about 2.5 decode "
        "steps while streams decode, and up to 4096 tokens when more prompts wait than stream",
        metavar="N|auto",
    ),
    Option(
        "prompt_cache_bytes",
        "prompt-cache-bytes",
        size,
        "KV cache kept for reuse by later prompts with the same prefix; 0 turns it off "
        "(default 512M)",
        metavar="BYTES",
    ),
    Option(
        "responses_store_bytes",
        "responses-store-bytes",
        size,
        "memory for stored Responses API responses (store: true), least recently used out; "
        "0 keeps none (default 64M)",
        metavar="BYTES",
    ),
    Option(
        "memory_limit",
        "memory-limit",
        optional(size),
        "memory the model and its KV caches may use; requests beyond wait or get 503 "
        "(default: 90%% of the device's memory)",
        metavar="BYTES",
    ),
    Option(
        "weights",
        "weights",
        choice(WEIGHT_POLICIES),
        "for a quantized model: keep the quantized weights, a dense copy, or both and pick "
        "per step by batch size; auto (on a GPU) calibrates and keeps the dense copy only "
        "where it wins, and serves the quantized weights on a CPU (default %(default)s)",
    ),
    Option(
        "calibrate",
        "calibrate",
        choice(CALIBRATE_WHEN),
        "when to time the quantized weights against their dense copy, the first time a model "
        "runs on a machine: idle serves at once with a routing known to be safe for the device "
        "and measures between requests; start measures before ready (default %(default)s)",
        metavar="WHEN",
    ),
    Option(
        "kv_bits",
        "kv-bits",
        optional(one_of(KV_BITS)),
        "keep the KV cache quantized to 8 or 4 bits (about 1/2 or 1/4 of the memory per "
        "token, so more streams or longer contexts fit; default: full precision)",
        metavar="8|4",
    ),
    Option(
        "quantized_kv_start",
        "quantized-kv-start",
        integer(0),
        "with --kv-bits: a batch's KV cache stays in full precision until it holds this many "
        "tokens (default %(default)s: quantized from the first)",
        metavar="N",
    ),
    Option(
        "request_timeout",
        "request-timeout",
        optional(number(0.0, above=True)),
        "seconds a request may take in all (default: no limit)",
        metavar="S",
    ),
    Option(
        "max_images",
        "max-images-per-request",
        integer(1),
        "image parts one request may carry (default %(default)s)",
        metavar="N",
    ),
    Option(
        "max_image_bytes",
        "max-image-bytes",
        size,
        "largest image accepted, encoded (default 20M)",
        metavar="BYTES",
    ),
    Option(
        "max_image_pixels",
        "max-image-pixels",
        integer(1),
        "largest image accepted, width x height, checked before decoding (default %(default)s)",
        metavar="N",
    ),
    Option(
        "allow_image_files",
        "allow-image-files",
        text,
        "accept local image paths (file:// URLs or absolute paths) that resolve inside DIR",
        metavar="DIR",
        is_path=True,
    ),
    Option(
        "allow_image_urls",
        "allow-image-urls",
        boolean,
        "fetch http(s) image URLs (within --max-image-bytes and --image-url-timeout)",
        "bool",
    ),
    Option(
        "image_url_timeout",
        "image-url-timeout",
        number(0.0, above=True),
        "seconds a remote image may take to arrive (default %(default)s)",
        metavar="S",
    ),
    Option(
        "backend",
        "backend",
        choice(BACKENDS),
        "serve as one rank of an MLX distributed group over ring, jaccl, mpi or nccl; start "
        "every rank with mlx.launch or --distributed (docs/DISTRIBUTED.md)",
    ),
    Option(
        "pipeline",
        "pipeline",
        boolean,
        "with --backend: give each rank a slice of the layers (pipeline parallel) instead of "
        "a slice of every layer (tensor parallel, the default)",
        "bool",
    ),
    Option(
        "distributed",
        "distributed",
        text,
        "start every rank through mlx.launch: HOSTS is its host file, or a number of ranks on "
        "this machine; needs --backend",
        metavar="HOSTS",
    ),
    Option(
        "step_timeout",
        "step-timeout",
        number(0.0, above=True),
        "with --backend: seconds a step may take before the group counts as lost (default "
        "%(default)s)",
        metavar="S",
    ),
    Option(
        "shutdown_timeout",
        "shutdown-timeout",
        number(0.0),
        "seconds in-flight requests get to finish on SIGTERM (default %(default)s)",
        metavar="S",
    ),
    Option(
        "log_level",
        "log-level",
        choice(LOG_LEVELS),
        "debug, info, warning or error (default %(default)s)",
        metavar="LEVEL",
    ),
    Option(
        "log_file",
        "log-file",
        text,
        "append logs to PATH (reopened after logrotate)",
        metavar="PATH",
        is_path=True,
    ),
    Option(
        "log_format",
        "log-format",
        choice(LOG_FORMATS),
        "text or json lines (default %(default)s)",
        metavar="FORMAT",
    ),
    Option(
        "pid_file",
        "pid-file",
        text,
        "PID file (default: per port, see docs/SERVICE.md)",
        metavar="PATH",
        is_path=True,
    ),
    Option(
        "daemon", "daemon", boolean, "detach and run in the background (needs no terminal)", "bool"
    ),
    Option(
        "idle_unload",
        "idle-unload",
        idle_seconds,
        "unload a model after this many seconds without requests (its memory goes back to the "
        "system; the next request loads it again); 0 unloads as soon as it is idle, -1 never "
        "(default)",
        metavar="S",
    ),
    Option(
        "unix_socket",
        "unix-socket",
        text,
        "listen on this Unix socket instead of --host/--port (how --models runs its workers; "
        "such a server exits when the process that started it does)",
        metavar="PATH",
        is_path=True,
    ),
    Option(
        "models",
        "models",
        lambda raw: modelspec.parse(raw, _model_setting),
        "serve several models: every MLX model directory or .gguf file directly inside DIR, "
        "each loaded on demand in its own worker process (a config file may list models with "
        "their own settings; see docs/SERVICE.md)",
        metavar="DIR",
        is_path=True,
    ),
    Option(
        "preload",
        "preload",
        text_list,
        "with --models: load these model ids at start (comma-separated or repeated; '*' for all)",
        "list",
        "ID",
    ),
    Option(
        "max_loaded",
        "max-loaded",
        optional(integer(1)),
        "with --models: most models loaded at once; the least recently used idle one is "
        "unloaded to make room (default: as many as --memory-budget holds)",
        metavar="N",
    ),
    Option(
        "memory_budget",
        "memory-budget",
        auto(size),
        "with --models: memory all loaded models (weights + KV caches) may use; 'auto' (the "
        "default) is 90%% of the device's memory",
        metavar="BYTES|auto",
    ),
    Option(
        "admin_keys",
        "admin-key",
        text_list,
        "with --models: the bearer key the /admin routes need (repeatable; default: the API keys)",
        "list",
        "KEY",
    ),
)
BY_KEY = {name: opt for opt in OPTIONS for name in {opt.flag.replace("-", "_"), opt.field}}
PATH_FIELDS = frozenset(opt.field for opt in OPTIONS if opt.is_path)


def option_for(key: str) -> Option | None:
    return BY_KEY.get(key.replace("-", "_").lower())


def _model_setting(key: str, raw: object) -> tuple[str, object]:
    """One per-model setting of a ``models`` object: (Config field, parsed value)."""
    opt = option_for(key)
    if opt is None:
        raise ValueError(_unknown(key).removeprefix(f"key {key!r} "))
    if opt.field in modelspec.FRONT_END_FIELDS:
        raise ValueError("is a setting of the whole server, not of one model")
    return opt.field, opt.parse(raw)


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key.replace("_", "-"), [o.flag for o in OPTIONS], n=1)
    return f"key {key!r} is unknown" + (f" (did you mean {close[0]!r}?)" if close else "")


# ----- the layers -----


def from_file(path: str) -> dict[str, object]:
    """Settings from a JSON config file, parsed; errors name the file and the key."""
    where = f"config file {path}"
    try:
        data = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of settings")
    base = Path(path).expanduser().resolve().parent
    values: dict[str, object] = {}
    problems: list[str] = []  # every bad key at once, not one per attempt
    for key, raw in data.items():
        opt = option_for(key)
        if opt is None:
            problems.append(f"{where}: {_unknown(key)}")
            continue
        try:
            value = _parse(opt, raw, f"{where}: key {key!r}")
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if opt.is_path and isinstance(value, tuple):  # models: directories and model objects
            value = modelspec.rebase(value, base, PATH_FIELDS)
        elif opt.is_path and value is not None:
            value = _relative_to(base, str(value), hub_id_ok=opt.field == "model")
        values[opt.field] = value
    if problems:
        raise ConfigError("\n".join(problems))
    return values


def _relative_to(base: Path, value: str, *, hub_id_ok: bool) -> str:
    """A path in a config file is relative to the file; a model that is not there but reads as a
    hub id (``ORG/NAME``) stays an id, for mlxd.models.locate to find in the model caches."""
    path = base / Path(value).expanduser()
    if hub_id_ok and not path.exists() and HUB_ID.match(value):
        return value
    return str(path)


def from_env(environ: Mapping[str, str]) -> dict[str, object]:
    """Settings from MLXD_* (and, below them, MLX_SERVER_*) variables; empty means unset."""
    known = {opt.env: opt for opt in OPTIONS}
    values: dict[str, object] = {}
    for env, opt in known.items():
        alias = ENV_ALIAS_PREFIX + env[len(ENV_PREFIX) :]
        for name in (env, alias):
            if environ.get(name, "").strip():
                values[opt.field] = _parse(opt, environ[name], name)
                break
    return values


def env_warnings(environ: Mapping[str, str]) -> list[str]:
    """MLXD_* variables that are no setting: a typo would otherwise be ignored in silence. (Not
    an error: build and test tools share the prefix.)"""
    known = sorted({opt.env for opt in OPTIONS} | ENV_NOT_SETTINGS)
    out = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            out.append(
                f"{name} is not a setting; ignored"
                + (f" (did you mean {close[0]}?)" if close else "")
            )
    return out


def _parse(opt: Option, raw: object, where: str) -> object:
    try:
        return opt.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_key_file(path: str) -> tuple[str, ...]:
    """API keys, one per line; blank lines and # comments are skipped."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"api key file {path}: cannot read: {exc.strerror or exc}") from None
    keys = tuple(s for line in lines if (s := line.strip()) and not s.startswith("#"))
    if not keys:  # an empty file must not silently turn authentication off
        raise ConfigError(f"api key file {path}: holds no keys")
    return keys


def layers(
    cli: Mapping[str, object], environ: Mapping[str, str], config_path: str | None = None
) -> dict[str, Any]:
    """The settings some layer gives (file, env, CLI; defaults left out), by Config field."""
    path = config_path or environ.get(ENV_CONFIG, "").strip() or None
    values: dict[str, Any] = {}  # field -> value of that field's type (each option's parser)
    if path:
        values.update(from_file(path))
    values.update(from_env(environ))
    values.update(cli)
    if values.get("api_key_file"):
        keys = tuple(values.get("api_keys", ())) + read_key_file(str(values["api_key_file"]))
        values["api_keys"] = tuple(dict.fromkeys(keys))  # merged, first order kept
    return values


def resolve(
    cli: Mapping[str, object], environ: Mapping[str, str], config_path: str | None = None
) -> Config:
    """defaults < file (``config_path`` or $MLXD_CONFIG) < env < CLI (already parsed values)."""
    values: dict[str, Any] = layers(cli, environ, config_path)  # each value parsed by its Option
    return Config(**values)


def absolute_paths(config: Config) -> Config:
    """The same settings with paths made absolute (a daemon changes directory to /)."""
    changes: dict[str, Any] = {}
    for opt in OPTIONS:
        value = getattr(config, opt.field)
        if opt.is_path and isinstance(value, tuple):
            changes[opt.field] = modelspec.rebase(value, Path.cwd(), PATH_FIELDS)
        elif opt.is_path and value:
            changes[opt.field] = os.path.abspath(os.path.expanduser(value))
    return dataclasses.replace(config, **changes)
