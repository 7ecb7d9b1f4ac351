"""A quantized KV cache that joins mlx-lm's batch (--kv-bits 8|4, --quantized-kv-start N).

mlx-lm's ``QuantizedKVCache`` holds one sequence and has no ``merge``, so its ``BatchGenerator``
refuses it ("does not yet support batching with history"). ``QuantizedBatchKVCache`` is
``BatchKVCache``'s contract (left padding, prepare/finalize for right-padded prefill, filter,
extend, extract, merge, trim) with keys and values stored as ``mx.quantize`` triples (packed
words, scales, biases), learning from mlx-vlm's ``BatchQuantizedKVCache``. One sequence is the
same class with a batch of one, so a cache moves between the lone-sequence path, the batch and
the prompt cache unchanged.

A cache starts in full precision and quantizes itself once it holds ``start`` tokens (0: from the
first). Only then does it carry a ``bits`` attribute: mlx-lm's attention checks for it and runs
``quantized_scaled_dot_product_attention`` instead of the fused kernel. MLX's CUDA backend has no
``quantized_matmul`` for attention's shapes ("No implementation for problem shape: 5x5x128x32",
H200, MLX 0.32.4), so there (``dequantize=True``) the cache stays quantized at rest and hands each
layer its keys and values dequantized, for the usual attention; except decode steps where
kvattention's kernels are usable: then a one-token step writes the new keys and values to a
full-precision *tail* (``TAIL`` tokens, two writes a layer as a full-precision cache) and hands
attention its buffers as stored; the tail is quantized into the buffers in one go when it is full
and before anything but another such step (prefill, extend, merge, trim, ``state``), while
``filter`` and ``extract`` carry it along (a row's left padding never reaches into it).
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import (
    KVCache,
    _BaseCache,
    create_causal_mask,
    dynamic_roll,
    make_prompt_cache,
)

from mlxd.engine import kvattention
from mlxd.engine.rowfilter import filter_rows, kept_rows

GROUP_SIZES = (64, 32)  # elements per scale and bias: mlx-lm's default, else what the head allows
STEP = 256  # tokens per allocation, as mlx-lm's caches
# Decode tokens a cache whose attention reads the codes (kvattention, CUDA) keeps in full
# precision before quantizing them in one go: a decode step then writes two parts a layer, as a
# full-precision cache, instead of quantizing twice and writing six.
TAIL = 32

Parts = tuple[mx.array, ...]  # (dense,) or (packed, scales, biases)


def quantized_fraction(bits: int, dtype_size: int, group_size: int = GROUP_SIZES[0]) -> float:
    """Bytes per element once quantized, over bytes per element in full precision."""
    return (bits / 8 + 2 * dtype_size / group_size) / dtype_size


def _ints(a: mx.array) -> list[int]:
    values: list = a.tolist()  # type: ignore[assignment]  # a 1-d array: a list of ints
    return [int(x) for x in values]


def _kept_parts(parts: Parts, rows: mx.array, shift: int) -> Parts:
    """``rowfilter.kept_rows`` for each of a cache's parts."""
    return tuple(kept_rows(p, rows, shift) for p in parts)


def group_size_for(head_dim: int) -> int:
    for size in GROUP_SIZES:
        if head_dim % size == 0:
            return size
    raise ValueError(
        f"--kv-bits needs a head size that is a multiple of 32 (this model: {head_dim})"
    )


class QuantizedBatchKVCache(_BaseCache):
    def __init__(
        self,
        left_padding: list[int],
        bits: int,
        start: int = 0,
        group_size: int | None = None,
        dequantize: bool = False,
    ) -> None:
        self.keys: Parts | None = None
        self.values: Parts | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-p for p in left_padding])
        self._idx = 0
        self._right_padding: mx.array | None = None
        self.kv_bits, self.start, self.group_size = bits, start, group_size
        self.quantized = start <= 0
        self.dequantize = dequantize  # hand attention full-precision keys and values
        self.dims: tuple[int, int, int, int] | None = None  # heads, key, value width, dtype size
        # The full-precision tail: positions [_idx - _tail, _idx) of every row (kvattention).
        self._tail = 0
        self._tail_k: mx.array | None = None
        self._tail_v: mx.array | None = None

    @classmethod
    def like(cls, other: QuantizedBatchKVCache, left_padding: list[int]) -> QuantizedBatchKVCache:
        made = cls(left_padding, other.kv_bits, other.start, other.group_size, other.dequantize)
        made.dims = other.dims
        return made

    def __getattr__(self, name: str):
        # ``bits`` exists only once quantized: mlx-lm picks the attention path by hasattr.
        if (
            name == "bits"
            and self.__dict__.get("quantized")
            and not self.__dict__.get("dequantize")
        ):
            return self.kv_bits
        raise AttributeError(name)

    # ----- the model's side -----

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        if self.dims is None:
            self.dims = (keys.shape[1], keys.shape[3], values.shape[3], keys.dtype.size)
        if not self.quantized and self._idx >= self.start:
            self._quantize()
        n = keys.shape[2]
        if (
            n == 1
            and self.dequantize
            and self.quantized
            and self.keys is not None
            and self._fused()
        ):
            self._append_tail(keys, values)
            return self.keys, self.values  # as stored: attention reads codes and tail
        self.flush()
        fresh = self._idx == 0
        self._write(self._encode(keys), self._encode(values), n)
        self._idx += n
        self.offset = self.offset + n
        if fresh and self.quantized and self.dequantize:
            # The chunk is all the cache holds: attention reads it as computed rather than
            # dequantized from the buffers just written (two dequantizes of the whole buffer a
            # layer, and attention no longer waits for the quantize), and the prompt's own
            # attention is exact, as where prefill runs before quantizing (--quantized-kv-start).
            return keys, values
        return self._fetch()

    def _write(self, new_k: Parts, new_v: Parts, n: int) -> None:
        """Store n encoded positions after the quantized ones (growing the buffers)."""
        prev = self._idx - self._tail
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            self._grow(new_k, new_v, n, prev)
        assert self.keys is not None and self.values is not None
        for stored, new in zip(self.keys + self.values, new_k + new_v, strict=True):
            stored[..., prev : prev + n, :] = new

    def _append_tail(self, keys: mx.array, values: mx.array) -> None:
        if self._tail == TAIL:
            self.flush()
        if self._tail_k is None or self._tail_k.shape[0] != keys.shape[0]:
            shape = (keys.shape[0], keys.shape[1], TAIL)
            self._tail_k = mx.zeros((*shape, keys.shape[3]), keys.dtype)
            self._tail_v = mx.zeros((*shape, values.shape[3]), values.dtype)
        assert self._tail_v is not None
        t = self._tail
        self._tail_k[..., t : t + 1, :] = keys
        self._tail_v[..., t : t + 1, :] = values
        self._tail += 1
        self._idx += 1
        self.offset = self.offset + 1

    def tail(self) -> tuple[mx.array, mx.array] | None:
        """The full-precision (keys, values) of the last ``_tail`` positions, if any."""
        if not self._tail or self._tail_k is None or self._tail_v is None:
            return None
        return self._tail_k, self._tail_v

    def flush(self) -> None:
        """Quantize the tail into the buffers (before anything but a fused decode step)."""
        if not self._tail:
            return
        assert self._tail_k is not None and self._tail_v is not None
        t = self._tail
        new_k = self._encode(self._tail_k[..., :t, :])
        new_v = self._encode(self._tail_v[..., :t, :])
        self._write(new_k, new_v, t)
        self._tail = 0

    def _drop_tail(self) -> None:
        self.flush()
        self._tail_k = self._tail_v = None

    def _encode(self, x: mx.array) -> Parts:
        if not self.quantized:
            return (x,)
        if self.group_size is None:
            self.group_size = group_size_for(x.shape[-1])
        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.kv_bits))

    def _grow(self, new_k: Parts, new_v: Parts, n: int, kept: int) -> None:
        size = (STEP + n - 1) // STEP * STEP

        def grown(stored: Parts | None, new: Parts) -> Parts:
            blank = [mx.zeros((*p.shape[:2], size, p.shape[3]), p.dtype) for p in new]
            if stored is None:
                return tuple(blank)
            old = [s[..., :kept, :] for s in stored]
            return tuple(mx.concatenate([s, b], axis=2) for s, b in zip(old, blank, strict=True))

        self.keys, self.values = grown(self.keys, new_k), grown(self.values, new_v)

    def _fetch(self):
        assert self.keys is not None and self.values is not None
        n = self._idx
        if self.quantized and self.dequantize:
            # The whole buffer, then a view of its first n: a slice is not contiguous, and
            # dequantizing one would first copy each of its three parts (six more kernels a
            # layer a step, where a decode step's time is mostly launches).
            return self._decode(self.keys)[..., :n, :], self._decode(self.values)[..., :n, :]
        k = tuple(p[..., :n, :] for p in self.keys)
        v = tuple(p[..., :n, :] for p in self.values)
        if not self.quantized:
            return k[0], v[0]
        return k, v

    def _fused(self) -> bool:
        assert self.dims is not None
        _heads, key_width, value_width, _size = self.dims
        group = self.group_size or group_size_for(key_width)
        return key_width == value_width and kvattention.usable(key_width, self.kv_bits, group)

    def _decode(self, parts: Parts) -> mx.array:
        packed, scales, biases = parts
        return mx.dequantize(packed, scales, biases, group_size=self.group_size, bits=self.kv_bits)

    def _quantize(self) -> None:
        self.quantized = True
        if self.keys is not None and self.values is not None:
            self.keys = self._encode(self.keys[0])
            self.values = self._encode(self.values[0])

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    # ----- the batch's side (BatchKVCache's contract) -----

    def prepare(self, *, left_padding=None, lengths=None, right_padding=None) -> None:
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("left padding can only be added to an empty cache")
            self.left_padding = self.left_padding + mx.array(left_padding)
            self.offset = self.offset - mx.array(left_padding)
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        self.flush()
        if self._right_padding is None:
            return
        padding = self._right_padding
        if self.keys is not None and self.values is not None:
            self.keys = tuple(dynamic_roll(p, padding[:, None], axis=2) for p in self.keys)
            self.values = tuple(dynamic_roll(p, padding[:, None], axis=2) for p in self.values)
        self.offset = self.offset - padding
        self.left_padding = self.left_padding + padding
        self._right_padding = None

    def filter(self, batch_indices) -> None:
        """Keep these rows, in one copy of each part (rowfilter.py), and of the tail: a row's
        left padding never reaches into the tail (rows join after a flush), so dropping shared
        padding leaves the tail's positions as they were."""
        rows = filter_rows(self, batch_indices, _kept_parts)
        if rows is None:  # every row, in order: nothing moved
            return
        if self._tail and self._tail_k is not None and self._tail_v is not None:
            self._tail_k = mx.take(self._tail_k, rows, axis=0)
            self._tail_v = mx.take(self._tail_v, rows, axis=0)
        else:
            self._tail_k = self._tail_v = None

    def extend(self, other: QuantizedBatchKVCache) -> None:
        self._drop_tail()
        other.flush()
        if self.quantized != other.quantized:  # one batch, one representation
            for cache in (self, other):
                if not cache.quantized:
                    cache._quantize()
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        idx = max(self._idx, other._idx)
        like = self if self.keys is not None else other
        # Keep the larger buffer's room past idx (as mlx-lm's BatchKVCache.extend): cut to idx,
        # the next decode step would grow, that is copy, the whole batch's cache after every
        # join (H200, 8B, 64 streams: the class alone, unquantized, served 0.77x).
        size = max([idx] + [c.keys[0].shape[2] for c in (self, other) if c.keys is not None])
        parts = [self._aligned(c, idx, like, size) for c in (self, other)]
        self.keys = tuple(
            mx.concatenate([a, b]) for a, b in zip(parts[0][0], parts[1][0], strict=True)
        )
        self.values = tuple(
            mx.concatenate([a, b]) for a, b in zip(parts[0][1], parts[1][1], strict=True)
        )
        self.offset = mx.concatenate([self.offset, other.offset])
        self.left_padding = mx.concatenate([parts[0][2], parts[1][2]])
        self._idx = idx

    @staticmethod
    def _aligned(c: QuantizedBatchKVCache, idx: int, like: QuantizedBatchKVCache, size: int):
        """``c``'s parts padded on the left so its last token sits at ``idx``, and on the right
        to ``size`` positions (room for the next tokens)."""
        assert like.keys is not None and like.values is not None
        rows = c.offset.shape[0]
        if c.keys is None or c.values is None:
            keys = tuple(mx.zeros((rows, *p.shape[1:2], 0, p.shape[3]), p.dtype) for p in like.keys)
            values = tuple(
                mx.zeros((rows, *p.shape[1:2], 0, p.shape[3]), p.dtype) for p in like.values
            )
        else:
            keys = tuple(p[..., : c._idx, :] for p in c.keys)
            values = tuple(p[..., : c._idx, :] for p in c.values)
        left, right = idx - c._idx, size - idx
        if left or right:
            pad = [(0, 0), (0, 0), (left, right), (0, 0)]
            keys = tuple(mx.pad(p, pad) for p in keys)
            values = tuple(mx.pad(p, pad) for p in values)
        return keys, values, c.left_padding + left

    def extract(self, idx: int) -> QuantizedBatchKVCache:
        """Row ``idx`` as a cache of its own (a batch of one, no padding)."""
        one = QuantizedBatchKVCache.like(self, [0])
        one.quantized = self.quantized
        if self.keys is None or self.values is None:
            return one
        pad = _ints(self.left_padding)[idx]
        end = self._idx - self._tail
        one.keys = tuple(mx.contiguous(p[idx : idx + 1, :, pad:end]) for p in self.keys)
        one.values = tuple(mx.contiguous(p[idx : idx + 1, :, pad:end]) for p in self.values)
        if self._tail and self._tail_k is not None and self._tail_v is not None:
            one._tail = self._tail
            one._tail_k = mx.contiguous(self._tail_k[idx : idx + 1])
            one._tail_v = mx.contiguous(self._tail_v[idx : idx + 1])
        one._idx = self._idx - pad
        one.offset = mx.array([one._idx])
        return one

    @classmethod
    def merge(cls, caches: list[QuantizedBatchKVCache]) -> QuantizedBatchKVCache:
        """One batch of single sequences (``BatchGenerator`` merges the caches it is given)."""
        for c in caches:
            c.flush()
        lengths = [c.size() for c in caches]
        idx = max(lengths)
        merged = cls.like(caches[0], [idx - n for n in lengths])
        merged.quantized = any(c.quantized for c in caches)
        if all(c.keys is None for c in caches):
            return merged
        rows = [c if c.quantized == merged.quantized else c._copy_quantized() for c in caches]
        like = next(c for c in rows if c.keys is not None)
        assert like.keys is not None and like.values is not None
        size = (idx // STEP + 1) * STEP  # room for the tokens that follow
        # One zeroed buffer per part and each row written into it: two operations a row and
        # part, where padding each row first (pad, then concatenate) took about four.
        keys = [mx.zeros((len(rows), *p.shape[1:2], size, p.shape[3]), p.dtype) for p in like.keys]
        values = [
            mx.zeros((len(rows), *p.shape[1:2], size, p.shape[3]), p.dtype) for p in like.values
        ]
        for i, c in enumerate(rows):
            if c.keys is None or c.values is None or not c._idx:
                continue
            start = idx - c._idx
            for stored, part in zip(keys + values, c.keys + c.values, strict=True):
                stored[i : i + 1, :, start:idx] = part[..., : c._idx, :]
        merged.keys, merged.values = tuple(keys), tuple(values)
        merged.offset = mx.array([idx] * len(caches)) - merged.left_padding
        merged._idx = idx
        return merged

    def _copy_quantized(self) -> QuantizedBatchKVCache:
        self.flush()
        copy = QuantizedBatchKVCache.like(self, _ints(self.left_padding))
        copy.keys, copy.values, copy._idx, copy.offset = (
            self.keys,
            self.values,
            self._idx,
            self.offset,
        )
        copy._quantize()
        return copy

    # ----- bookkeeping -----

    @property
    def state(self):
        self.flush()
        return self.keys, self.values, self.offset, self.left_padding

    @state.setter
    def state(self, v) -> None:
        self.keys, self.values, self.offset, self.left_padding = v
        self._tail, self._tail_k, self._tail_v = 0, None, None

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        self.flush()
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        tail = [] if self._tail_k is None or self._tail_v is None else [self._tail_k, self._tail_v]
        return sum(p.nbytes for p in (*self.keys, *self.values, *tail))

    def full_precision_bytes_per_token(self) -> int:
        """Keys and values of one token of one sequence, unquantized (0 until seen)."""
        if self.dims is None:
            return 0
        heads, dk, dv, size = self.dims
        return heads * (dk + dv) * size

    def quantized_bytes_per_token(self) -> int:
        """The same once quantized: packed words plus a scale and a bias per group."""
        if self.dims is None:
            return 0
        heads, dk, dv, size = self.dims
        group = self.group_size or group_size_for(dk)
        return int(heads * (dk + dv) * quantized_fraction(self.kv_bits, size, group) * size)


class CacheMaker:
    """Makes each new sequence's cache: mlx-lm's own (None) without ``bits``, else quantized."""

    def __init__(self, model, bits: int | None, start: int, dequantize: bool) -> None:
        self.bits, self.start, self.dequantize = bits, start, dequantize
        layers = make_prompt_cache(model) if bits is not None else []
        kinds = {type(c).__name__ for c in layers}
        if layers and kinds != {KVCache.__name__}:
            raise ValueError(f"--kv-bits needs plain KV caches; this model uses {sorted(kinds)}")
        self.layers = len(layers)

    def __call__(self) -> list | None:
        if self.bits is None:
            return None
        return [
            QuantizedBatchKVCache([0], self.bits, self.start, dequantize=self.dequantize)
            for _ in range(self.layers)
        ]
