"""One rank of ``test_pipeline.py``'s group (run by MLX's launcher): load MODEL's pipeline share
through mlxd, run a prompt, and on rank 0 write the last position's logits to OUT (a .npy-free
JSON list), next to one process's logits of the whole model."""

from __future__ import annotations

import dataclasses
import json
import sys

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from mlxd.models import loader, shard
from mlxd.models.group import join

model_dir, weights, out = sys.argv[1:4]
group = dataclasses.replace(
    join("ring", pipeline=True, expected=2, step_timeout=60), mode="pipeline"
)
tokens = mx.array([[5, 6, 7, 8, 9, 10]])
model = shard.load_shard(model_dir, group, weights).model
got = model(tokens, cache=make_prompt_cache(model))[0, -1]
mx.eval(got)
if group.rank == 0:
    whole = loader.load(model_dir).model
    if weights == "dense":
        from mlx_lm.utils import dequantize_model

        whole = dequantize_model(whole)
    want = whole(tokens, cache=make_prompt_cache(whole))[0, -1]
    result = {
        "dtype": str(got.dtype),
        "got": got.astype(mx.float32).tolist(),
        "want": want.astype(mx.float32).tolist(),
    }
    with open(out, "w") as f:
        json.dump(result, f)
# both ranks leave together: the one that exits first would close the other's sockets
mx.eval(mx.distributed.all_sum(mx.array([1]), group=group.handle))
