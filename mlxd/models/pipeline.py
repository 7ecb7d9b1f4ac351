"""Pipeline parallelism for mlx-lm's llama family, the way mlx-lm's own models do it.

mlx-lm 0.32 gives ``model.model.pipeline(group)`` to qwen2, qwen3-moe, deepseek and a few more
(its ``PipelineMixin``), not to llama (nor mistral, which loads as llama). ``enable`` turns a
loaded llama model into one that has it, with the same forward pass as mlx-lm's qwen2: each
rank runs its slice of the layers, receives the hidden state from the rank before it with
``recv_like``, sends its output on with ``send``, and an ``all_gather`` hands the last rank's
result to every rank so that all of them compute the same logits. Rank 0 runs the last layers.
No transport of ours: MLX's send, recv and all_gather over the group's backend.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models import llama
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.pipeline import PipelineMixin


class PipelineLlamaModel(PipelineMixin, llama.LlamaModel):
    """``LlamaModel`` with ``pipeline(group)``; the group is kept for send/recv/all_gather."""

    pipeline_group: Any = None

    def pipeline(self, group, split=None) -> None:
        super().pipeline(group, split)
        self.pipeline_group = group

    def __call__(self, inputs: mx.array, cache=None, input_embeddings: mx.array | None = None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        layers = self.pipeline_layers
        rank, size, group = self.pipeline_rank, self.pipeline_size, self.pipeline_group
        if cache is None:
            cache = [None] * len(layers)
        masks = {}
        for sliding in (False, True):
            first = next((i for i, x in enumerate(layers) if x.use_sliding == sliding), None)
            if first is not None:
                window = self.sliding_window if sliding else None
                masks[sliding] = create_attention_mask(h, cache[first], window_size=window)
        if rank < size - 1:  # the ranks after us ran the earlier layers
            h = mx.distributed.recv_like(h, rank + 1, group=group)
        for layer, c in zip(layers, cache, strict=True):
            h = layer(h, masks[layer.use_sliding], cache=c)
        if rank != 0:
            h = mx.distributed.send(h, rank - 1, group=group)
            if cache[-1] is not None:  # keep the send in the graph the caller evaluates
                cache[-1].keys = mx.depends(cache[-1].keys, h)
        if size > 1:  # every rank gets the last rank's output, inside the graph
            h = mx.distributed.all_gather(h, group=group)[: h.shape[0]]
        return self.norm(h)


class PipelineLlama(llama.Model):
    """``llama.Model`` whose ``layers`` (and so its KV caches) are this rank's slice."""

    @property
    def layers(self):
        return self.model.pipeline_layers


def enable(model) -> bool:
    """Give a loaded llama-family model ``model.model.pipeline``; False for other models (those
    have mlx-lm's own, or none). The instances keep their weights; only their class changes."""
    if not isinstance(model, llama.Model) or isinstance(model, PipelineLlama):
        return False
    inner = model.model
    inner.__class__ = PipelineLlamaModel
    # PipelineMixin.__init__ never ran on this instance: the single-rank defaults.
    inner.pipeline_rank, inner.pipeline_size, inner.start_idx, inner.end_idx = 0, 1, 0, None
    model.__class__ = PipelineLlama
    return True
