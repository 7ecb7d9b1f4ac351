"""The options that say how requests are run: scheduling (queue, batch, prefill, step budget),
memory (prompt cache, stored responses, the memory limit), weights, the KV cache, per-request
limits and images, and groups of processes (--backend).

They are the middle of config.py's one ``OPTIONS`` table, spliced in there in this order (which
is the order of ``--help``); their defaults are ``Config``'s, in config.py. Stdlib only, as
config.py is.
"""

from __future__ import annotations

from mlxd.service.options import (
    Option,
    auto,
    boolean,
    choice,
    integer,
    number,
    one_of,
    optional,
    size,
    text,
)
from mlxd.service.ranks import BACKENDS

WEIGHT_POLICIES = ("auto", "quantized", "dense", "both")
CALIBRATE_WHEN = ("idle", "start")  # see mlxd/engine/calibration.py
WARM_UP_WHEN = ("idle", "start")  # see mlxd/engine/warmup.py
TENSOR_SUMS = ("float32", "model")  # widesum.py's exact-as-one-device sums, or MLX's own
KV_BITS = (4, 8)  # of what mx.quantize offers, the widths that keep keys and values useful

SERVING_OPTIONS = (
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
        "warm_up",
        "warm-up",
        choice(WARM_UP_WHEN),
        "when to run the batch paths once (several sequences, sampling, a long prompt chunk, a "
        "cached prefix), so that no request pays for their first use (a kernel compile on a "
        "GPU): idle is ready once one sequence runs and warms the rest between requests; start "
        "runs all before ready (default %(default)s; a group of ranks always does)",
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
        "tensor_sums",
        "tensor-sums",
        choice(TENSOR_SUMS),
        "tensor parallel: model sums the ranks' partial products in the model's dtype (MLX's "
        "own); float32 sums them in float32 and rounds once, as one device does (text stays "
        "closer to one device's; 2x H200: steps ~20%% slower, a dense share ~35%% larger) "
        "(default %(default)s)",
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
)
