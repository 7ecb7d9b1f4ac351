"""Import a llama-family GGUF file (llama.cpp's format) as an mlx-lm llama model and tokenizer.

``mx.load`` reads GGUF tensors natively: F32/F16 come back as arrays, and Q4_0, Q4_1 and Q8_0 as
MLX's own affine quantized triples (packed uint32 weight, float16 scales and biases, groups of 32).
It hides the tensor types, though: Q2_K/Q4_K/Q6_K become float16 without a word, BF16 is narrowed
to float16, and types it doesn't know vanish from the result. So we read the header ourselves first
(stdlib; 0.07 s for SmolLM2's 49k tokens and merges), refuse what we cannot load faithfully, and only
then load the tensors.

What llama.cpp's converter changed on the way in, undone here:
- tensor names (``blk.N.attn_q`` -> ``model.layers.N.self_attn.q_proj``, ...);
- Q and K rows, permuted for its interleaved ("GPT-J") rotary layout; mlx-lm's llama uses the
  HF half-split layout (``nn.RoPE(traditional=False)``);
- the tokenizer, flattened into ``tokenizer.ggml.*`` metadata; rebuilt as a ``tokenizers`` BPE;
- llama 3's rope scaling, kept only as a ``rope_freqs`` tensor; recovered as mlx-lm's "llama3".
"""

from __future__ import annotations

import json
import logging
import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.models.rope_utils import initialize_rope
from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, TokenizerWrapper
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

log = logging.getLogger(__name__)


class UnsupportedModelError(ValueError):
    """The file is valid GGUF, but holds something we cannot serve faithfully (the message says what)."""


SUPPORTED_ARCHITECTURES = {"llama"}

# ggml.h `enum ggml_type`, for naming what a file holds.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}
GGML_BF16 = 30
# What mx.load returns unchanged or as an exact MLX quantized triple. BF16 it narrows to float16
# (overflow past 65504), so we read those bytes ourselves. Everything else is refused: mx.load
# expands K-quants to float16 (4x the memory of the file) and errors on or drops the rest.
SUPPORTED_TENSOR_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", GGML_BF16: "BF16"}
GGML_GROUP_SIZE = 32  # every ggml block type mx.load keeps quantized has 32 weights per block

# GGUF metadata value types (ggml's docs/gguf.md) -> struct code, for the fixed-size ones.
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = {2, 3}  # v1 used 32-bit lengths; llama.cpp has written v3 since 2023
GGUF_DEFAULT_ALIGNMENT = 32

# llama.cpp tensor names -> mlx-lm llama module paths.
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
BLOCK_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|scales|biases)")
ROPE_FREQS = "rope_freqs.weight"  # llama 3.1+ rope scaling, as per-frequency divisors

# Llama 3.1/3.2's config.json values; GGUF keeps only the factors they produce, which we check.
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
ROPE_FACTOR_RTOL = 1e-3


# -- Header ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # MLX order (outermost first), the reverse of GGUF's ne[]
    offset: int  # absolute, in bytes from the start of the file


@dataclass(frozen=True)
class GgufHeader:
    metadata: dict
    tensors: dict[str, TensorInfo]


class _Cursor:
    """Little-endian reads from a buffer, advancing an offset."""

    def __init__(self, buf) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def string(self) -> str:
        (n,) = self.unpack("Q")
        self.pos += n
        return bytes(self.buf[self.pos - n:self.pos]).decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype == GGUF_STRING:
            return self.string()
        if vtype != GGUF_ARRAY:
            return self.unpack(GGUF_SCALARS[vtype])[0]
        etype, n = self.unpack("IQ")
        if etype == GGUF_STRING:
            return [self.string() for _ in range(n)]
        if etype not in GGUF_SCALARS:
            raise UnsupportedModelError(f"GGUF metadata array of value type {etype}")
        return list(self.unpack(f"{n}{GGUF_SCALARS[etype]}"))


def read_header(path: Path) -> GgufHeader:
    """Metadata and tensor directory of a GGUF file, without touching the tensor data."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf)
        try:
            return _parse_header(cur, path)
        except struct.error:
            raise UnsupportedModelError(f"{path.name}: GGUF header cut short at byte {cur.pos}") from None


def _parse_header(cur: _Cursor, path: Path) -> GgufHeader:
    magic, version, n_tensors, n_keys = cur.unpack("4sIQQ")
    if magic != GGUF_MAGIC:
        raise UnsupportedModelError(f"{path.name} is not a GGUF file (magic {magic!r})")
    if version not in GGUF_VERSIONS:
        raise UnsupportedModelError(f"GGUF version {version} (supported: 2, 3)")
    metadata = {}
    for _ in range(n_keys):
        key = cur.string()
        metadata[key] = cur.value(cur.unpack("I")[0])
    raw = []
    for _ in range(n_tensors):
        name = cur.string()
        (n_dims,) = cur.unpack("I")
        dims = cur.unpack(f"{n_dims}Q")
        ggml_type, offset = cur.unpack("IQ")
        raw.append((name, ggml_type, tuple(reversed(dims)), offset))
    align = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    data_start = -(-cur.pos // align) * align  # tensor data starts at the next aligned byte
    return GgufHeader(metadata, {n: TensorInfo(n, t, s, data_start + o) for n, t, s, o in raw})


def check_supported(header: GgufHeader) -> None:
    """Refuse, before reading gigabytes, anything this importer would get wrong."""
    arch = header.metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(f"architecture {arch!r} (supported: {sorted(SUPPORTED_ARCHITECTURES)})")
    if header.metadata.get(f"{arch}.expert_count", 0):
        raise UnsupportedModelError("mixture-of-experts llama (expert_count > 0)")
    bad = [t for t in header.tensors.values() if t.ggml_type not in SUPPORTED_TENSOR_TYPES]
    if bad:
        kinds = sorted({_type_name(t.ggml_type) for t in bad})
        raise UnsupportedModelError(
            f"tensor {bad[0].name} has type {_type_name(bad[0].ggml_type)} ({len(bad)} tensors of "
            f"type {', '.join(kinds)}); MLX loads only {', '.join(SUPPORTED_TENSOR_TYPES.values())}")
    if "token_embd.weight" not in header.tensors:
        raise UnsupportedModelError("GGUF without token_embd.weight")
    for name in header.tensors:
        if name != ROPE_FREQS:
            mlx_name(name)  # raises on a tensor llama has no place for


def _type_name(ggml_type: int) -> str:
    return GGML_TYPE_NAMES.get(ggml_type, f"ggml type {ggml_type}")


# -- Config ---------------------------------------------------------------------------------------


def model_config(header: GgufHeader) -> dict:
    """mlx-lm/HF config.json fields from ``llama.*`` metadata (quantization and rope added later)."""
    md = header.metadata

    def hp(key, *default):
        if f"llama.{key}" not in md and not default:
            raise UnsupportedModelError(f"GGUF lacks llama.{key}")
        return md.get(f"llama.{key}", *default)

    n_heads, hidden = hp("attention.head_count"), hp("embedding_length")
    head_dim = hp("attention.key_length", hidden // n_heads)
    if hp("attention.value_length", head_dim) != head_dim or hp("rope.dimension_count", head_dim) != head_dim:
        raise UnsupportedModelError("value length or rotary dimensions that differ from the head size")
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": hp("block_count"),
        "intermediate_size": hp("feed_forward_length"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": hp("attention.head_count_kv", n_heads),
        "head_dim": head_dim,
        "rms_norm_eps": _f32(hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(hp("rope.freq_base", 10000.0)),
        "max_position_embeddings": hp("context_length"),
        "vocab_size": header.tensors["token_embd.weight"].shape[0],
        "tie_word_embeddings": "output.weight" not in header.tensors,
    }
    scaling = md.get("llama.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": _f32(md["llama.rope.scaling.factor"])}
    elif scaling != "none":
        raise UnsupportedModelError(f"rope scaling type {scaling!r}")
    return config


def _f32(x: float) -> float:
    # GGUF stores float32: 1e-5 arrives as 9.99999974e-06. Keep the shortest decimal that reads
    # back as the same float32, so config.json says 1e-05 like the original.
    return float(str(np.float32(x)))


def llama3_rope_scaling(factors: mx.array, config: dict) -> dict:
    """The mlx-lm "llama3" rope_scaling that yields ``rope_freqs.weight``, or refuse."""
    dims, base = config["head_dim"], config["rope_theta"]
    if factors.shape != (dims // 2,):
        raise UnsupportedModelError(f"rope_freqs.weight of shape {factors.shape} for head size {dims}")
    scaling = {"rope_type": "llama3", "factor": factors.max().item(), **LLAMA3_ROPE}
    rope = initialize_rope(dims, base, False, scaling, config["max_position_embeddings"])
    # Llama3RoPE keeps base**(2i/d) times the factor per frequency; divide the base part out.
    expected = rope._freqs / base ** (mx.arange(0, dims, 2) / dims)
    if not mx.allclose(expected, factors.astype(mx.float32), rtol=ROPE_FACTOR_RTOL).item():
        raise UnsupportedModelError("rope_freqs.weight that matches no llama3 rope scaling")
    return scaling


# -- Weights --------------------------------------------------------------------------------------


def mlx_name(gguf_name: str) -> str:
    if m := BLOCK_NAME.fullmatch(gguf_name):
        if m[2] in BLOCK_TENSORS:
            return f"model.layers.{m[1]}.{BLOCK_TENSORS[m[2]]}.{m[3]}"
    else:
        base, _, part = gguf_name.rpartition(".")
        if base in GLOBAL_TENSORS and part in ("weight", "scales", "biases"):
            return f"{GLOBAL_TENSORS[base]}.{part}"
    raise UnsupportedModelError(f"tensor {gguf_name} has no place in a llama model")


def unpermute_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's rotary permutation of Q/K output rows.

    Its converter maps HF rows (head, half, i) to (head, i, half); quantization groups run along
    the input dimension, so packed weights, scales and biases all take the same row shuffle.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def mlx_weights(path: Path, header: GgufHeader, config: dict) -> dict[str, mx.array]:
    weights = mx.load(str(path))
    for info in header.tensors.values():
        if info.ggml_type == GGML_BF16:
            weights[info.name] = _read_bf16(path, info)
    if ROPE_FREQS in weights:
        config["rope_scaling"] = llama3_rope_scaling(weights.pop(ROPE_FREQS), config)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    out = {}
    for name, w in weights.items():
        m = BLOCK_NAME.fullmatch(name)
        if m and m[2] in heads:
            w = unpermute_rows(w, heads[m[2]])
        out[mlx_name(name)] = w
    return out


def _read_bf16(path: Path, info: TensorInfo) -> mx.array:
    count = int(np.prod(info.shape))
    raw = np.fromfile(path, dtype=np.uint16, count=count, offset=info.offset)
    return mx.array(raw).view(mx.bfloat16).reshape(info.shape)


def module_quantization(model: nn.Module, weights: dict[str, mx.array]) -> dict[str, dict | bool]:
    """Per quantizable module: its MLX quantization params (read off the packed shapes), or False."""
    params = {}
    for path, module in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module):
        if not hasattr(module, "to_quantized"):
            continue
        if (scales := weights.get(f"{path}.scales")) is None:
            params[path] = False
            continue
        in_dims = scales.shape[-1] * GGML_GROUP_SIZE
        bits = weights[f"{path}.weight"].shape[-1] * 32 // in_dims
        params[path] = {"group_size": GGML_GROUP_SIZE, "bits": bits}
    return params


def quantization_entry(params: dict[str, dict | bool]) -> dict | None:
    """mlx-lm's ``quantization`` config: the commonest params as the default, plus an entry per
    module that differs (its own params, or False for a dense one).

    ``mlx_lm.utils.load_model`` looks a module's path up in this dict before anything else, so the
    exported directory rebuilds exactly these layers.
    """
    counts = Counter(json.dumps(p, sort_keys=True) for p in params.values() if p)
    if not counts:
        return None
    default = json.loads(counts.most_common(1)[0][0])
    overrides = {path: p for path, p in params.items() if p != default}
    return {**default, "mode": "affine", **overrides}


def build_model(config: dict, weights: dict[str, mx.array]) -> nn.Module:
    model = llama.Model(llama.ModelArgs.from_dict(config))
    params = module_quantization(model, weights)
    if quantization := quantization_entry(params):
        config["quantization"] = quantization
        nn.quantize(model, class_predicate=lambda path, _: params.get(path, False))
    model.load_weights(list(weights.items()), strict=True)
    model.eval()
    mx.eval(model.parameters())
    return model


# -- Tokenizer ------------------------------------------------------------------------------------

# tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 2, 3, 4
SPECIAL_TOKEN_TYPES = {TOKEN_UNKNOWN, TOKEN_CONTROL}

# The split regexes llama.cpp's llama-vocab.cpp uses, as the HF pre-tokenizers that match them.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gpt2_split():
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm_split():  # llama.cpp: "\p{N}" first, then GPT-2's regex
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _llama3_split():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# tokenizer.ggml.pre -> (pre-tokenizer, BPE ignore_merges). llama 3 looks whole words up in the
# vocab before merging (HF "ignore_merges"; llama.cpp does the same for this pre type).
PRE_TOKENIZERS = {
    "gpt-2": (_gpt2_split, False),
    "gpt2": (_gpt2_split, False),
    "smollm": (_smollm_split, False),
    "llama-bpe": (_llama3_split, True),
    "llama3": (_llama3_split, True),
    "llama-v3": (_llama3_split, True),
}
FALLBACK_PRE = "gpt-2"


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer rebuilt from ``tokenizer.ggml.*``, with what HF keeps beside tokenizer.json."""

    backend: Tokenizer
    special: dict[str, str | None]  # bos/eos/pad/unk token text
    eos_token_ids: list[int]
    chat_template: str | None
    model_max_length: int


def tokenizer_spec(md: dict, model_max_length: int) -> TokenizerSpec:
    kind = md.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise UnsupportedModelError(f"tokenizer model {kind!r} (supported: 'gpt2', byte-level BPE)")
    tokens = md["tokenizer.ggml.tokens"]
    backend = _bpe(tokens, md["tokenizer.ggml.merges"], md.get("tokenizer.ggml.pre", FALLBACK_PRE))
    types = md.get("tokenizer.ggml.token_type", [])
    backend.add_special_tokens([_added(tokens[i], True) for i, t in enumerate(types) if t in SPECIAL_TOKEN_TYPES])
    backend.add_tokens([_added(tokens[i], False) for i, t in enumerate(types) if t == TOKEN_USER_DEFINED])
    ids = {role: md.get(f"tokenizer.ggml.{key}_token_id") for role, key in
           (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown"))}
    special = {role: (tokens[i] if i is not None else None) for role, i in ids.items()}
    if md.get("tokenizer.ggml.add_bos_token", False) and special["bos"] is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{special['bos']} $A", pair=f"{special['bos']} $A {special['bos']} $B",
            special_tokens=[(special["bos"], ids["bos"])])
    # Generation ends at any of these; llama 3 instruct ends turns with eot, not eos.
    eos = [md[k] for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                           "tokenizer.ggml.eom_token_id") if k in md]
    return TokenizerSpec(backend, special, sorted(set(eos)), md.get("tokenizer.chat_template"),
                         model_max_length)


def _bpe(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    if pre not in PRE_TOKENIZERS:
        # A wrong split regex moves some token boundaries (digits, apostrophes) but keeps the text
        # intact, so serve the model rather than refuse it; say so once.
        log.warning("unknown tokenizer.ggml.pre %r; splitting words with GPT-2's regex", pre)
        pre = FALLBACK_PRE
    split, ignore_merges = PRE_TOKENIZERS[pre]
    # llama.cpp writes a merge as "left right"; it splits at the first space after the first char.
    pairs = [(m[:i], m[i + 1:]) for m in merges for i in [m.index(" ", 1)]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    backend = Tokenizer(models.BPE(vocab, pairs, ignore_merges=ignore_merges))
    backend.pre_tokenizer = split()
    backend.decoder = decoders.ByteLevel()
    return backend


def _added(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False)


def hf_tokenizer(spec: TokenizerSpec) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=spec.backend, chat_template=spec.chat_template,
        model_max_length=spec.model_max_length, clean_up_tokenization_spaces=False,
        **{f"{role}_token": text for role, text in spec.special.items() if text is not None})


def write_tokenizer(spec: TokenizerSpec, out: Path) -> None:
    spec.backend.save(str(out / "tokenizer.json"))
    special = {f"{role}_token": text for role, text in spec.special.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        # The generic class: a model-specific one would rebuild the pipeline from its own defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": spec.backend.post_processor is not None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": spec.model_max_length,
        "chat_template": spec.chat_template,
    }, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: v for k, v in special.items() if v is not None}, indent=2, ensure_ascii=False))


# -- Public ---------------------------------------------------------------------------------------


def _load(path: str | Path) -> tuple[nn.Module, TokenizerSpec, dict]:
    path = Path(path)
    header = read_header(path)
    check_supported(header)
    config = model_config(header)
    spec = tokenizer_spec(header.metadata, config["max_position_embeddings"])
    model = build_model(config, mlx_weights(path, header, config))
    config["bos_token_id"] = header.metadata.get("tokenizer.ggml.bos_token_id")
    config["eos_token_id"] = spec.eos_token_ids[0] if len(spec.eos_token_ids) == 1 else spec.eos_token_ids
    return model, spec, config


def load_gguf(path: str | Path) -> tuple[nn.Module, TokenizerWrapper, dict]:
    """Model (mlx-lm llama, weights evaluated, eval mode), tokenizer, and its config.json dict."""
    model, spec, config = _load(path)
    tokenizer = TokenizerWrapper(hf_tokenizer(spec), BPEStreamingDetokenizer,
                                 eos_token_ids=spec.eos_token_ids)
    return model, tokenizer, config


def export_mlx(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write an MLX model directory that plain ``mlx_lm.load`` reads back as the same model."""
    model, spec, config = _load(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(spec, out)
    return out
