"""Pipeline parallelism for mlx-lm's llama family, the way mlx-lm's own models do it.

mlx-lm 0.32 gives ``model.model.pipeline(group)`` to qwen2, qwen3-moe, deepseek and a few more
(its ``PipelineMixin``), not to llama (nor mistral, which loads as llama). ``enable`` turns a
loaded llama model into one that has it, split as mlx-lm splits (rank 0 runs the last layers).

The hidden state moves from stage to stage with ``all_sum``, the stage that computed it adding
it and every other rank adding zeros: every rank ends each stage holding that stage's output,
the last stage's included, so all of them compute the same logits (mlx-lm's pipelines use
``send``/``recv_like`` and a closing ``all_gather``, but MLX 0.32's CUDA backend has no send or
recv, while every backend has ``all_sum``). Adding zeros is exact, so the output is bit for bit
what one device computes, provided the zeros have the dtype the stage's owner sends
(``agree_dtypes``, once at load). No transport of ours: MLX's collective over the group's backend.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
from mlx_lm.models import llama
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.pipeline import PipelineMixin

# What a stage may hand on, in the order its code travels (code = index + 1; 0 = not mine).
DTYPES = [mx.float32, mx.float16, mx.bfloat16, mx.float64]


class PipelineLlamaModel(PipelineMixin, llama.LlamaModel):
    """``LlamaModel`` with ``pipeline(group)``; the group is kept for send/recv/all_gather."""

    pipeline_group: Any = None

    # Each stage's output dtype as an index into DTYPES, the first layers' stage first (index
    # size - 1 - stage): every rank must add zeros of the dtype the stage's owner sends. Bytes,
    # not a list: an nn.Module keeps lists among its parameters.
    stage_dtypes: bytes = b""

    def pipeline(self, group, split=None) -> None:
        super().pipeline(group, split)
        self.pipeline_group = group
        self.stage_dtypes = b""

    def agree_dtypes(self) -> None:
        """The dtype of each stage's output, agreed over the group at load time (one small
        ``all_sum`` per stage). A stage's owner runs one token through its layers to learn it;
        the others cannot (they do not hold those layers). Every rank calls it once, after
        ``pipeline``, before the first forward. A model whose weights mix dtypes
        (a GGUF export: float16 projections, float32 norms) turns a float16 embedding into a
        float32 hidden state: zeros added in the embedding's dtype were summed against a buffer
        of twice their size, and SmolLM2's logits came out NaN."""
        codes = []
        h = self.embed_tokens(mx.zeros((1, 1), dtype=mx.int32))
        for stage in reversed(range(self.pipeline_size)):
            code = 0
            if stage == self.pipeline_rank:
                for layer in self.pipeline_layers:
                    h = layer(h, None, cache=None)
                code = DTYPES.index(h.dtype) + 1
            agreed = mx.distributed.all_sum(
                mx.array([code], dtype=mx.int32), group=self.pipeline_group
            )
            summed = agreed.item()  # an int32 sum: an int
            assert isinstance(summed, int)
            codes.append(summed - 1)
            h = mx.zeros(h.shape, DTYPES[codes[-1]])
        self.stage_dtypes = bytes(codes)

    def __call__(self, inputs: mx.array, cache=None, input_embeddings: mx.array | None = None):
        h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
        layers = self.pipeline_layers
        rank, size, group = self.pipeline_rank, self.pipeline_size, self.pipeline_group
        if cache is None:
            cache = [None] * len(layers)
        if size > 1 and len(self.stage_dtypes) != size:
            raise RuntimeError("a pipeline's ranks must agree_dtypes() before the first forward")
        masks = {}
        for sliding in (False, True):
            first = next((i for i, x in enumerate(layers) if x.use_sliding == sliding), None)
            if first is not None:
                window = self.sliding_window if sliding else None
                masks[sliding] = create_attention_mask(h, cache[first], window_size=window)
        for stage in reversed(range(size)):  # the last rank runs the first layers
            if stage == rank:
                for layer, c in zip(layers, cache, strict=True):
                    h = layer(h, masks[layer.use_sliding], cache=c)
            if size > 1:  # hand this stage's output to every rank
                # Zeros that depend on h: each all_sum waits for the one before it, on every rank
                dtype = DTYPES[self.stage_dtypes[size - 1 - stage]]
                mine = h if stage == rank else mx.depends(mx.zeros(h.shape, dtype), h)
                h = mx.distributed.all_sum(mine, group=group)
        last = cache[-1] if cache else None
        if size > 1 and last is not None and getattr(last, "keys", None) is not None:
            # A prefill chunk evaluates only the caches; on an early stage those do not depend
            # on the later stages' all_sums, which the other ranks would then wait for forever.
            last.keys = mx.depends(last.keys, h)
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
