"""The effective configuration: one frozen record from defaults < config file < env < CLI.

One table, ``OPTIONS``, names every setting once: its ``Config`` field, its long flag (which is
also its config-file key and, upper-cased, its ``MLXD_`` environment variable) and its parser.
Parsers take a string (CLI, env) or a JSON value (file) and raise ``ValueError`` with a message
that starts with the offending value; callers prefix where it came from. The table's middle
(how requests are run: scheduling, memory, weights, KV cache, limits, images, groups) is written
in serving_options.py and spliced in; sources.py reads the layers (file, env, CLI) and resolves
them into a ``Config``.
Stdlib only: ``mlxd --stop`` and ``--print-config`` must answer without importing mlx.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from mlxd.service import modelspec
from mlxd.service.options import (
    IDLE_NEVER,
    Option,
    auto,
    boolean,
    choice,
    idle_seconds,
    integer,
    number,
    optional,
    size,
    text,
    text_list,
)
from mlxd.service.serving_options import SERVING_OPTIONS

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
# thinking models: auto/deepseek split the thinking into reasoning_content (mlxd/api/reasoning.py)
REASONING_FORMATS = ("auto", "deepseek", "none")
DEFAULT_REASONING_FORMAT = "auto"
# With --backend: how long one engine step (or an idle heartbeat) may take before the group counts
# as lost; a long prefill chunk of a large model on a slow device must fit well within it.
DEFAULT_STEP_TIMEOUT_S = 60.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
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
    warm_up: str = "idle"  # when the batch paths warm up (one sequence's always before ready)
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
    tensor_sums: str = "model"  # tensor parallel: MLX's own sums (float32: closer, slower)
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
    *SERVING_OPTIONS,  # queue-size .. step-timeout: how requests are run (serving_options.py)
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
        raise ValueError(unknown_key(key).removeprefix(f"key {key!r} "))
    if opt.field in modelspec.FRONT_END_FIELDS:
        raise ValueError("is a setting of the whole server, not of one model")
    return opt.field, opt.parse(raw)


def unknown_key(key: str) -> str:
    """The error for a key no option has, with the closest flag as a hint."""
    close = difflib.get_close_matches(key.replace("_", "-"), [o.flag for o in OPTIONS], n=1)
    return f"key {key!r} is unknown" + (f" (did you mean {close[0]!r}?)" if close else "")
