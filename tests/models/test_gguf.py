"""mlxd.gguf: a tiny llama written as an MLX directory and, the way llama.cpp's converter writes it,
as GGUF files (F32, F16, BF16, Q8_0, Q4_0, Q4_1, mixed; tied and untied). The GGUF import must give
the same logits and token ids as the MLX directory, and its export must load back in plain mlx_lm."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from mlx_lm import generate, load
from mlx_lm.tokenizer_utils import load as load_tokenizer
from tokenizers import Regex, Tokenizer, pre_tokenizers

from mlxd.models.gguf import (
    UnsupportedModelError,
    export_mlx,
    hf_tokenizer,
    load_gguf,
    tokenizer_spec,
    write_tokenizer,
)

from ggufwrite import WRITERS, llama_cpp_permute, tokenizer_metadata
from tinymodel import SPECIAL_TOKENS, build_tiny_model, train_tokenizer

SMOLLM = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is Paris. Café 日本語 🙂 12345"
TEXTS = [
    "Hello, world! How are you today?",
    "Café crème, naïve façade, Zürich.",
    "日本語のテキストと中文文本",
    "Emoji: 🙂 🚀 🎉 ≤ ≥",
    "Numbers 0123456789 and 3.14159",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "  leading spaces\n\n\ttabs and 'quotes' don't",
]

# Tolerances, relative to the largest logit. F32 and F16 tensors reach MLX bit for bit (F16 matmuls
# promote to float32), so those logits agree to rounding. The quantized types are compared against
# an MLX model holding the very values the file decodes to (gguf-py's own dequantize), so what is
# left is MLX's arithmetic on float16 scales and biases: float16 steps by 2**-11 (5e-4) relative,
# and we measured 2e-4..7e-4. For scale: Q4_0 against the original weights is off by ~10%.
FLOAT_RTOL = 1e-6
QUANT_RTOL = 2e-3


def assert_logits_close(got: mx.array, want: mx.array, rtol: float) -> None:
    tol = rtol * mx.abs(want).max().item()
    assert got.shape == want.shape
    assert mx.abs(got - want).max().item() <= tol
    # Greedy picks agree wherever the reference's top two are further apart than the noise.
    top2 = mx.sort(want, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol
    assert mx.all(mx.where(clear, got.argmax(-1) == want.argmax(-1), True)).item()


# -- Writing GGUF the way llama.cpp's convert_hf_to_gguf.py does -----------------------------------

GGUF_GLOBAL = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
GGUF_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(name: str) -> str:
    if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name):
        return f"blk.{m[1]}.{GGUF_BLOCK[m[2]]}.weight"
    return GGUF_GLOBAL[name.removesuffix(".weight")] + ".weight"


def quantize(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(what the file stores, what it decodes to) for one tensor."""
    data = gguf.quants.quantize(w, qtype)
    return data, gguf.quants.dequantize(data, qtype).reshape(w.shape)


def write_gguf(path: Path, model_dir: Path, qtype_of, *, extra=(), edit=lambda w: None) -> dict:
    """Write ``model_dir`` as a GGUF file; ``qtype_of(gguf_name)`` picks each matrix's type.

    Returns the weights the file decodes to, by MLX name and in HF row order: the reference."""
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    edit(w)
    w.add_block_count(config["num_hidden_layers"])
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_rope_freq_base(config["rope_theta"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(config["vocab_size"])
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    for key, value in tokenizer_metadata(tok, tok_config, "gpt-2").items():
        getattr(w, WRITERS[key])(value)
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    reference = {}
    for name, value in sorted(mx.load(str(model_dir / "model.safetensors")).items()):
        data = np.array(value.astype(mx.float32))
        gname = gguf_name(name)
        if (kind := gname.split(".")[-2]) in heads:
            data = llama_cpp_permute(data, heads[kind])
        qtype = Q.F32 if data.ndim == 1 else qtype_of(gname)
        stored, decoded = quantize(data, qtype)
        if kind in heads:  # rows are quantized one by one, so HF order decodes the same values
            decoded = quantize(np.array(value.astype(mx.float32)), qtype)[1]
        w.add_tensor(gname, stored, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
        reference[name] = mx.array(decoded)
    for name, data in extra:
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


MIXED = {
    "token_embd": Q.Q8_0,
    "blk.0": Q.Q8_0,
    "blk.1.attn_v": Q.Q4_1,
    "blk.1": Q.Q4_0,
    "output": Q.F16,
}


def mixed_qtype(name: str) -> Q:
    return next(q for prefix, q in MIXED.items() if name.startswith(prefix + "."))


# -- Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        tied: build_tiny_model(root / f"tied{tied}", tie_word_embeddings=tied)
        for tied in (False, True)
    }


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, tiny_dirs):
    """name -> (gguf path, MLX dir, reference weights), written once for the module."""
    root = tmp_path_factory.mktemp("gguf")
    plans = {
        "f32": (False, lambda _: Q.F32),
        "f32-tied": (True, lambda _: Q.F32),
        "f16": (False, lambda _: Q.F16),
        "bf16": (False, lambda _: Q.BF16),
        "q8_0": (False, lambda _: Q.Q8_0),
        "q4_0": (False, lambda _: Q.Q4_0),
        "q4_1": (False, lambda _: Q.Q4_1),
        "q4_0-tied": (True, lambda _: Q.Q4_0),
        "mixed": (False, mixed_qtype),
    }
    files = {}
    for name, (tied, qtype_of) in plans.items():
        path = root / f"{name}.gguf"
        files[name] = (path, tiny_dirs[tied], write_gguf(path, tiny_dirs[tied], qtype_of))
    return files


def logits(model, tokenizer, text: str = PROMPT) -> mx.array:
    ids = tokenizer.encode(text)
    return model(mx.array([ids]))[0].astype(mx.float32)


def reference_model(model_dir: Path, weights: dict):
    model, tokenizer = load(str(model_dir))
    model.load_weights(list(weights.items()))
    return model, tokenizer


# -- Model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,rtol",
    [
        ("f32", FLOAT_RTOL),
        ("f32-tied", FLOAT_RTOL),
        ("f16", FLOAT_RTOL),
        ("bf16", FLOAT_RTOL),
        ("q8_0", QUANT_RTOL),
        ("q4_0", QUANT_RTOL),
        ("q4_1", QUANT_RTOL),
        ("q4_0-tied", QUANT_RTOL),
        ("mixed", QUANT_RTOL),
    ],
)
def test_logits_match_the_mlx_model(gguf_files, name, rtol):
    path, model_dir, weights = gguf_files[name]
    ref_model, ref_tok = reference_model(model_dir, weights)
    model, tokenizer, _ = load_gguf(path)
    assert_logits_close(logits(model, tokenizer), logits(ref_model, ref_tok), rtol)


def test_float_file_matches_the_original_weights_exactly(gguf_files):
    path, model_dir, _ = gguf_files["f32"]
    ref_model, ref_tok = load(str(model_dir))  # the untouched directory, no decoded reference
    model, tokenizer, config = load_gguf(path)
    assert_logits_close(logits(model, tokenizer), logits(ref_model, ref_tok), FLOAT_RTOL)
    assert "quantization" not in config


def test_config_names_each_quantized_layer(gguf_files):
    _, _, config = load_gguf(gguf_files["mixed"][0])
    q = config["quantization"]
    assert (q["group_size"], q["bits"]) == (32, 8)  # Q8_0 covers most of the weights
    assert q["model.layers.1.mlp.down_proj"] == {"group_size": 32, "bits": 4}
    assert q["model.layers.1.self_attn.v_proj"] == {"group_size": 32, "bits": 4}
    assert q["lm_head"] is False
    assert "model.layers.0.mlp.down_proj" not in q  # same as the default
    assert config["tie_word_embeddings"] is False


def test_bf16_stays_bf16(gguf_files):
    # mx.load narrows BF16 to float16, which overflows past 65504; the importer reads the bits itself.
    model, _, _ = load_gguf(gguf_files["bf16"][0])
    assert model.model.layers[0].mlp.up_proj.weight.dtype == mx.bfloat16


def test_quantized_tied_embedding_serves_as_lm_head(gguf_files):
    model, _, config = load_gguf(gguf_files["q4_0-tied"][0])
    assert config["tie_word_embeddings"] is True
    assert not hasattr(model, "lm_head")
    assert type(model.model.embed_tokens).__name__ == "QuantizedEmbedding"


@pytest.mark.parametrize("name", ["mixed", "q4_0-tied", "f16"])
def test_export_loads_in_plain_mlx_lm(gguf_files, tmp_path, name):
    model, tokenizer, config = load_gguf(gguf_files[name][0])
    out = export_mlx(gguf_files[name][0], tmp_path / "out")
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    } <= {p.name for p in out.iterdir()}
    model2, tokenizer2 = load(str(out))
    assert mx.array_equal(logits(model, tokenizer), logits(model2, tokenizer2)).item()
    for text in TEXTS:
        assert tokenizer2.encode(text) == tokenizer.encode(text)
    assert tokenizer2.eos_token_ids == tokenizer.eos_token_ids
    assert json.loads((out / "config.json").read_text()) == config


# -- Tokenizer ----------------------------------------------------------------------------------------


def test_tokenizer_matches_the_mlx_directory(gguf_files):
    path, model_dir, _ = gguf_files["f32"]
    _, want = load(str(model_dir))
    _, got, _ = load_gguf(path)
    for text in TEXTS:
        ids = got.encode(text)
        assert ids == want.encode(text), text
        assert got.decode(ids) == text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}]
    assert got.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    ) == want.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert got.eos_token_ids == want.eos_token_ids == {SPECIAL_TOKENS.index("<|im_end|>")}
    assert got.encode("<|im_start|>") == [SPECIAL_TOKENS.index("<|im_start|>")]


def test_streaming_detokenizer_rebuilds_multibyte_text(gguf_files):
    _, tokenizer, _ = load_gguf(gguf_files["f32"][0])
    detok = tokenizer.detokenizer
    detok.reset()
    for token in tokenizer.encode(TEXTS[3]):
        detok.add_token(token)
    detok.finalize()
    assert detok.text == TEXTS[3]


LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's and Mistral's own tokenizer.json regexes (transformers' qwen2 tokenizer, tekken.json)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
PRE_TOKENIZERS = {  # tokenizer.ggml.pre -> the HF tokenizer.json pipeline it stands for
    "smollm": (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), BYTE_LEVEL]),
        False,
    ),
    "llama-bpe": (
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        True,
    ),
    "gpt-2": (BYTE_LEVEL, False),
    "qwen2": (
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        False,
    ),
    "tekken": (
        pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(TEKKEN_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        ),
        True,
    ),
}
# Texts on which the pipelines disagree: digit runs, upper-case contractions, a word that is in
# the vocab but that no merge sequence builds (only "ignore_merges" finds it whole), camel case
# (tekken splits it), and spaces before a line's indentation.
UNMERGED_WORD = "\u0120zyx"  # " zyx" in byte-level form
PROBES = [
    "Numbers 0123456789 and 3.14159",
    "I'LL SAY IT'S 2024!\r\n  ok",
    "a zyx b",
    "camelCaseWords and HTTPServer/path",
    "def main():\n    print",
]


def with_pipeline(base: Tokenizer, pre_tokenizer, ignore_merges: bool) -> Tokenizer:
    spec = json.loads(base.to_str())
    spec["model"]["ignore_merges"] = ignore_merges
    spec["model"]["vocab"][UNMERGED_WORD] = len(spec["model"]["vocab"])
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.pre_tokenizer = pre_tokenizer
    return tok


@pytest.fixture(scope="module")
def pipelines():
    base = train_tokenizer()  # GPT-2 split while training, so digit runs and " 0" got merges
    return {pre: with_pipeline(base, *pipe) for pre, pipe in PRE_TOKENIZERS.items()}


def test_probes_tell_the_pre_tokenizers_apart(pipelines):
    for a, b in itertools.combinations(pipelines, 2):
        assert any(pipelines[a].encode(t).ids != pipelines[b].encode(t).ids for t in PROBES), (a, b)
    # ignore_merges alone changes the result too
    gpt2 = with_pipeline(train_tokenizer(), BYTE_LEVEL, True)
    assert gpt2.encode("a zyx").ids != pipelines["gpt-2"].encode("a zyx").ids


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZERS))
def test_pre_tokenizer_types(pipelines, pre):
    want = pipelines[pre]
    got = tokenizer_spec(tokenizer_metadata(want, {"eos_token": "<|im_end|>"}, pre), 1024).backend
    for text in TEXTS + PROBES:
        assert got.encode(text).ids == want.encode(text).ids, text


def test_unknown_pre_tokenizer_falls_back_to_gpt2_with_a_warning(pipelines, caplog):
    want = pipelines["gpt-2"]
    got = tokenizer_spec(
        tokenizer_metadata(want, {"eos_token": "<|im_end|>"}, "some-new-model"), 1024
    ).backend
    assert "some-new-model" in caplog.text
    assert got.encode(PROBES[0]).ids == want.encode(PROBES[0]).ids


def test_add_bos_token(tmp_path):
    md = tokenizer_metadata(
        train_tokenizer(),
        {"eos_token": "<|im_end|>", "bos_token": "<|endoftext|>", "add_bos_token": True},
        "gpt-2",
    )
    spec = tokenizer_spec(md, 1024)
    assert hf_tokenizer(spec).encode("hi")[0] == 0
    assert hf_tokenizer(spec).encode("hi", add_special_tokens=False)[0] != 0
    write_tokenizer(spec, tmp_path)
    assert load_tokenizer(tmp_path).encode("hi") == hf_tokenizer(spec).encode("hi")


# -- Rope scaling ---------------------------------------------------------------------------------


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def llama_cpp_rope_factors(base: float, dim: int, s: dict) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors for rope_type llama3."""
    factors = []
    low, high = (
        s["original_max_position_embeddings"] / s["low_freq_factor"],
        s["original_max_position_embeddings"] / s["high_freq_factor"],
    )
    for i in range(0, dim, 2):
        wavelen = 2 * np.pi * base ** (i / dim)
        if wavelen < high:
            factors.append(1.0)
        elif wavelen > low:
            factors.append(s["factor"])
        else:
            smooth = (s["original_max_position_embeddings"] / wavelen - s["low_freq_factor"]) / (
                s["high_freq_factor"] - s["low_freq_factor"]
            )
            factors.append(1 / ((1 - smooth) / s["factor"] + smooth))
    return np.array(factors, dtype=np.float32)


def test_llama3_rope_factors_become_rope_scaling(tmp_path):
    # theta 1e6 spreads the 8 wavelengths of head_dim 16 over all three llama3 bands.
    model_dir = build_tiny_model(tmp_path / "mlx", rope_scaling=LLAMA3_SCALING, rope_theta=1e6)
    factors = llama_cpp_rope_factors(1e6, 16, LLAMA3_SCALING)
    assert {1.0, 8.0} < set(factors.tolist())
    path = tmp_path / "rope.gguf"
    weights = write_gguf(path, model_dir, lambda _: Q.F32, extra=[("rope_freqs.weight", factors)])
    model, tokenizer, config = load_gguf(path)
    assert config["rope_scaling"] == LLAMA3_SCALING
    ref_model, ref_tok = reference_model(model_dir, weights)
    got = model.model.layers[0].self_attn.rope._freqs
    assert mx.allclose(got, ref_model.model.layers[0].self_attn.rope._freqs).item()
    text = " ".join(TEXTS)  # long enough for positions to tell the bands apart
    assert_logits_close(
        logits(model, tokenizer, text), logits(ref_model, ref_tok, text), FLOAT_RTOL
    )


def test_linear_rope_scaling(tmp_path):
    scaling = {"type": "linear", "factor": 4.0}
    model_dir = build_tiny_model(tmp_path / "mlx", rope_scaling=scaling)

    def add_scaling(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(scaling["factor"])

    weights = write_gguf(tmp_path / "linear.gguf", model_dir, lambda _: Q.F32, edit=add_scaling)
    model, tokenizer, config = load_gguf(tmp_path / "linear.gguf")
    assert config["rope_scaling"] == scaling
    ref_model, ref_tok = reference_model(model_dir, weights)
    assert_logits_close(logits(model, tokenizer), logits(ref_model, ref_tok), FLOAT_RTOL)


# -- Refusals -------------------------------------------------------------------------------------


def write_bare(path: Path, arch: str, tensors=()) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for name, data, qtype in tensors:
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture(tmp_path):
    with pytest.raises(
        UnsupportedModelError, match=r"'falcon' is not supported \(supported: gemma2"
    ):
        load_gguf(write_bare(tmp_path / "f.gguf", "falcon"))


@pytest.mark.parametrize("qtype", [Q.IQ2_XS, Q.IQ4_XS, Q.TQ1_0])
def test_unsupported_tensor_type(tmp_path, qtype):
    # Random blocks are fine: the header alone must refuse, before any tensor is read.
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = np.random.default_rng(0).integers(0, 256, (64, 256 // block * size), dtype=np.uint8)
    path = write_bare(
        tmp_path / "k.gguf",
        "llama",
        [
            ("token_embd.weight", np.zeros((8, 64), np.float32), None),
            ("blk.0.ffn_down.weight", data, qtype),
        ],
    )
    with pytest.raises(
        UnsupportedModelError, match=rf"blk\.0\.ffn_down\.weight has type {qtype.name}\b"
    ):
        load_gguf(path)


def test_unsupported_tensor_name(tmp_path):
    path = write_bare(
        tmp_path / "moe.gguf",
        "llama",
        [
            ("token_embd.weight", np.zeros((8, 32), np.float32), None),
            ("blk.0.ffn_gate_inp.weight", np.zeros((4, 32), np.float32), None),
        ],
    )
    with pytest.raises(UnsupportedModelError, match=r"blk\.0\.ffn_gate_inp\.weight"):
        load_gguf(path)


def test_unsupported_tokenizer_model():
    with pytest.raises(UnsupportedModelError, match=r"'bert' \(supported: 'gpt2'"):
        tokenizer_spec({"tokenizer.ggml.model": "bert"}, 1024)


@pytest.mark.parametrize(
    "data,message",
    [
        (b"\0" * 64, "not a GGUF"),
        (b"GGUF\1\0\0\0" + b"\0" * 16, "version 1"),
        (b"GGUF\3\0\0\0\0\0\0\0\0\0\0\0\1\0\0\0\0\0\0\0\xff", "cut short"),
    ],
)
def test_not_a_usable_gguf_file(tmp_path, data, message):
    (tmp_path / "x.gguf").write_bytes(data)
    with pytest.raises(UnsupportedModelError, match=message):
        load_gguf(tmp_path / "x.gguf")


# -- The real model -----------------------------------------------------------------------------


@pytest.mark.smollm
@pytest.mark.skipif(not SMOLLM.exists(), reason="run `make model` to fetch SmolLM2")
def test_smollm2_answers():
    start = time.perf_counter()
    model, tokenizer, config = load_gguf(SMOLLM)
    load_s = time.perf_counter() - start
    assert config["tie_word_embeddings"] and config["quantization"]["bits"] == 4
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = generate(model, tokenizer, prompt, max_tokens=20)
    print(f"load {load_s:.2f}s: {text!r}")
    assert "Paris" in text
