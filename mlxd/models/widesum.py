"""Tensor parallel's reductions in float32, so that a group computes what one device does.

A row-sharded projection (mlx-lm's ``o_proj`` and ``down_proj`` after ``model.shard(group)``:
MLX's ``ShardedToAllLinear`` and its quantized twin) has every rank multiply its slice of the
input by its slice of the weight, then ``all_sum`` the partial products. MLX rounds each partial
product to the model's dtype (bf16) before the sum, and the sum of two rounded halves is rounded
again; one device accumulates the whole product in float32 and rounds once. On a model whose
logits are close (a random 8B on two H200s) that flipped the greedy token at the first step.

Here the partial product is computed and summed in float32 and rounded to the model's dtype once,
after the bias: what is left of the difference is float32's summation order, far below one bf16
ulp. The cost: the activations are cast to float32 (decode: a few KB per layer; the all_sum moves
twice the bytes). A quantized matmul reads its packed weights as before and returns float32 for a
float32 input. A dense matmul of a float32 input with a bf16 weight would cast the weight to
float32 at every call (MLX promotes both operands): reading and writing the slice twice more per
step. So a dense slice is kept in float32 instead, converted once at load: these two projections
are about a third of a llama's weights, so a rank's dense share grows by about that much, and a
step reads those weights at twice the bytes (bf16 values are exact in float32, and in the TF32 a
GPU may multiply them in). The collectives stay in the step's one graph: nothing here evaluates.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

WIDE = mx.float32  # the dtype of a partial product and its sum


def _reduce(layer: nn.Module, partial: mx.array, dtype: mx.Dtype) -> mx.array:
    """Sum the ranks' float32 partial products, add the bias once, round once to ``dtype``."""
    total = mx.distributed.all_sum(partial, group=layer.group)
    if "bias" in layer:
        total = total + layer["bias"]
    return total.astype(dtype)


class WideShardedToAllLinear(nn.ShardedToAllLinear):
    """``ShardedToAllLinear`` whose weight (``widen`` converts it), partial product and sum are
    float32."""

    def __call__(self, x: mx.array) -> mx.array:
        return _reduce(self, x.astype(WIDE) @ self["weight"].T, x.dtype)


class WideQuantizedShardedToAllLinear(nn.QuantizedShardedToAllLinear):
    """``QuantizedShardedToAllLinear`` whose partial product and sum are float32."""

    def __call__(self, x: mx.array) -> mx.array:
        partial = mx.quantized_matmul(
            x.astype(WIDE),
            self["weight"],
            scales=self["scales"],
            biases=self.get("biases"),
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )
        return _reduce(self, partial, x.dtype)


# MLX's row-sharded layer -> ours; exact types: a subclass of MLX's may compute otherwise.
WIDER: dict[type, type] = {
    nn.ShardedToAllLinear: WideShardedToAllLinear,
    nn.QuantizedShardedToAllLinear: WideQuantizedShardedToAllLinear,
}


def widen(model: nn.Module) -> int:
    """Turn every row-sharded projection of a sharded ``model`` into its float32-sum twin, in
    place (the instances keep their weights; only their class changes); the count turned.
    Reductions a model codes itself (mlx-lm's mixture-of-experts blocks) are left as they are."""
    turned = 0
    for _name, module in model.named_modules():
        wide = WIDER.get(type(module))
        if wide is not None:
            module.__class__ = wide
            if wide is WideShardedToAllLinear:  # see the module's note; lazy, like the split
                module.weight = module.weight.astype(WIDE)
            turned += 1
    return turned
