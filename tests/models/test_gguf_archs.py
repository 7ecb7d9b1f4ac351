"""mlxd.models.gguf, beyond llama: a tiny random model of each architecture, built with mlx-lm's own
model class, written to GGUF as llama.cpp's converter writes it (tests/ggufwrite.py), must give the
logits mlx-lm gives with the weights the file decodes to. K-quant files (a Q4_K_M-like mix of every
block type) load as MLX quantized layers whose logits stay within what the measured weight error
allows; the rest is refused with a message naming what."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import mlx.core as mx
import mlx.nn as nn
import pytest
from gguf import GGMLQuantizationType as Q
from mlx_lm import load

from mlxd.models.gguf import UnsupportedModelError, export_mlx, load_gguf, open_gguf

from ggufwrite import CONFIGS, build_arch_model, write_model_gguf

# Long enough (40+ tokens) to cross gemma3's 8-token test window.
TEXT = "The capital of France is Paris. Café crème, 日本語 🙂 12345 and the quick brown fox jumps."
GGUF_NAMES = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 6)  # the same for every MIX arch
FLOAT_RTOL = 1e-6  # F32 files: the same weights, so the same logits up to rounding
LOADED_AS = {"mistral": "llama"}  # Mistral's GGUF files say llama, and mlx-lm remaps it to llama


def logits(model, tokenizer, text: str = TEXT) -> mx.array:
    return model(mx.array([tokenizer.encode(text)]))[0].astype(mx.float32)


def rel_max_diff(got: mx.array, want: mx.array) -> float:
    return (mx.abs(got - want).max() / mx.abs(want).max()).item()


def reference(model_dir: Path, weights: dict, ids: list[int]) -> mx.array:
    """mlx-lm's logits with the weights the GGUF file decodes to, for the same token ids (mlx-lm
    may load the test tokenizer as its model type's own class, which splits words otherwise)."""
    model, _ = load(str(model_dir))
    model.load_weights(list(weights.items()))
    return model(mx.array([ids]))[0].astype(mx.float32)


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    return {kind: build_arch_model(root / kind, kind) for kind in CONFIGS}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_architecture_matches_mlx_lm(arch_dirs, tmp_path, kind):
    path = tmp_path / f"{kind}.gguf"
    weights = write_model_gguf(path, arch_dirs[kind])
    model, tokenizer, config = load_gguf(path)
    assert config["model_type"] == LOADED_AS.get(kind, kind)
    assert "quantization" not in config
    assert (
        rel_max_diff(
            logits(model, tokenizer), reference(arch_dirs[kind], weights, tokenizer.encode(TEXT))
        )
        <= FLOAT_RTOL
    )


def test_config_carries_what_llama_cpp_derives(arch_dirs, tmp_path):
    _, _, gemma2 = load_gguf_written(arch_dirs, tmp_path, "gemma2")
    assert gemma2["query_pre_attn_scalar"] == 32  # the head size (27B's 46 layers: hidden/heads)
    assert (gemma2["attn_logit_softcapping"], gemma2["final_logit_softcapping"]) == (50.0, 30.0)
    _, _, gemma3 = load_gguf_written(arch_dirs, tmp_path, "gemma3_text")
    assert (gemma3["sliding_window"], gemma3["sliding_window_pattern"]) == (8, 6)
    assert gemma3["rope_local_base_freq"] == 10000.0
    assert gemma3["rope_scaling"] == {"type": "linear", "factor": 8.0}
    assert gemma3["tie_word_embeddings"] is True
    _, _, qwen3 = load_gguf_written(arch_dirs, tmp_path, "qwen3")
    assert qwen3["head_dim"] == 32 != qwen3["hidden_size"] // qwen3["num_attention_heads"]


def load_gguf_written(arch_dirs, tmp_path, kind, model_dir=None, **kw):
    path = tmp_path / f"{kind}.gguf"
    write_model_gguf(path, model_dir or arch_dirs[kind], **kw)
    return load_gguf(path)


PHI3_LONGROPE = {
    "partial_rotary_factor": 0.75,  # Phi-4-mini rotates 3/4 of each head
    "max_position_embeddings": 4096,
    "original_max_position_embeddings": 1024,
    "rope_scaling": {
        "type": "longrope",
        "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0],
        "short_factor": [1.0, 1.0, 1.1, 1.2, 1.3, 1.5],
    },
}


def test_phi3_partial_rotary_and_longrope(tmp_path):
    model_dir = build_arch_model(tmp_path / "phi3", "phi3", **PHI3_LONGROPE)
    weights = write_model_gguf(tmp_path / "phi3.gguf", model_dir)
    model, tokenizer, config = load_gguf(tmp_path / "phi3.gguf")
    for key, value in PHI3_LONGROPE.items():
        assert config[key] == value, key
    assert (
        rel_max_diff(
            logits(model, tokenizer), reference(model_dir, weights, tokenizer.encode(TEXT))
        )
        <= FLOAT_RTOL
    )


def test_gemma3_sliding_pattern_as_layer_flags(arch_dirs, tmp_path):
    # Newer converters write the pattern as one flag per layer (True: sliding window).
    flags = [(i + 1) % 3 != 0 for i in range(6)]
    model_dir = build_arch_model(tmp_path / "g3", "gemma3_text", sliding_window_pattern=3)
    path = tmp_path / "g3.gguf"
    weights = write_model_gguf(path, model_dir, edit=lambda w: w.add_sliding_window_pattern(flags))
    model, tokenizer, config = load_gguf(path)
    assert config["sliding_window_pattern"] == 3
    assert (
        rel_max_diff(
            logits(model, tokenizer), reference(model_dir, weights, tokenizer.encode(TEXT))
        )
        <= FLOAT_RTOL
    )


# -- K-quants ---------------------------------------------------------------------------------------

# K-quant rows are 256 weights: a wider tiny model.
WIDE = {"hidden_size": 256, "intermediate_size": 512, "head_dim": 64}
# Like llama.cpp's Q4_K_M (Q4_K, with Q6_K for the output, attn_v and half the ffn_down), plus
# every other block type somewhere: (gguf name prefix, type), first match wins.
MIX = [
    ("output.", Q.Q6_K),
    ("token_embd.", Q.Q4_K),
    ("blk.0.attn_v.", Q.Q6_K),
    ("blk.0.ffn_down.", Q.Q6_K),
    ("blk.1.ffn_down.", Q.Q5_K),
    (".attn_q.", Q.Q5_K),
    ("blk.1.attn_k.", Q.Q3_K),
    ("blk.1.attn_output.", Q.Q2_K),
    ("blk.0.ffn_up.", Q.Q8_0),
    ("blk.1.ffn_up.", Q.IQ4_NL),
    ("blk.1.ffn_gate.", Q.Q5_0),
    ("", Q.Q4_K),
]
MIX_BITS = {
    Q.Q2_K: 4,
    Q.Q3_K: 5,
    Q.Q4_K: 4,
    Q.Q5_K: 5,
    Q.Q6_K: 8,
    Q.Q8_0: 8,
    Q.IQ4_NL: 8,
    Q.Q5_0: 5,
}
# Each quantized layer's MLX weights against the file's exact values, relative RMS: float16
# scales alone where codes are kept (Q4_K, Q5_K: ~7e-4), re-quantization for Q6_K (~5e-3), Q3_K
# and Q2_K (~4e-2 and ~6e-2, a quarter of those formats' own error).
WEIGHT_RTOL = {Q.Q4_K: 2e-3, Q.Q5_K: 2e-3, Q.Q6_K: 1e-2, Q.Q3_K: 0.1, Q.Q2_K: 0.1}
# Logits, relative to the largest: the MLX model against mlx-lm running its dequantized weights
# (measured 2e-3..7e-3: float16 activations), and against the exact weights: measured 7e-3..6e-2,
# mostly from the one Q3_K attention layer (a wrong layout or scale is off by O(1)); with codes
# kept everywhere, 2e-3.
DEQUANTIZED_RTOL, EXACT_RTOL, KEPT_RTOL = 1.5e-2, 0.15, 1.5e-2


def mixed(name: str) -> Q:
    """A pattern starting with "." matches anywhere; the others match the start of the name."""
    return next(q for p, q in MIX if name.startswith(p) or (p.startswith(".") and p in name))


def kept(name: str) -> Q:
    """Only formats whose codes MLX keeps (Q4_K_S-like)."""
    q = mixed(name)
    return Q.Q5_K if q in (Q.Q6_K, Q.Q3_K, Q.Q2_K) else q


@pytest.fixture(scope="module")
def kquant_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("kquants")
    files = {}
    for kind, plan in (("llama", mixed), ("qwen2", mixed), ("gemma3_text", mixed), ("kept", kept)):
        model_type = "llama" if kind == "kept" else kind
        model_dir = build_arch_model(root / kind, model_type, **WIDE)
        path = root / f"{kind}.gguf"
        files[kind] = (path, model_dir, write_model_gguf(path, model_dir, plan))
    return files


def dequantized(model: nn.Module) -> dict[str, mx.array]:
    """The weights an MLX model's quantized layers stand for, in float32."""
    out = {}
    for path, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            scales, biases = m.scales.astype(mx.float32), m.biases.astype(mx.float32)
            out[f"{path}.weight"] = mx.dequantize(
                m.weight, scales, biases, group_size=m.group_size, bits=m.bits
            )
    return out


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
def test_kquant_file(kquant_files, kind):
    path, model_dir, weights = kquant_files[kind]
    loaded = open_gguf(path)
    ids = loaded.tokenizer.encode(TEXT)
    got = logits(loaded.model, loaded.tokenizer)
    ours = dequantized(loaded.model)
    for name, w in ours.items():
        gguf_type = qtype_of_mlx(name)
        err = (mx.sqrt(mx.sum((w - weights[name]) ** 2) / mx.sum(weights[name] ** 2))).item()
        assert err <= WEIGHT_RTOL.get(gguf_type, 0.0), (name, gguf_type.name, err)
    assert rel_max_diff(got, reference(model_dir, {**weights, **ours}, ids)) <= DEQUANTIZED_RTOL
    assert rel_max_diff(got, reference(model_dir, weights, ids)) <= EXACT_RTOL


def test_kept_codes_file_logits(kquant_files):
    path, model_dir, weights = kquant_files["kept"]
    model, tokenizer, _ = load_gguf(path)
    want = reference(model_dir, weights, tokenizer.encode(TEXT))
    assert rel_max_diff(logits(model, tokenizer), want) <= KEPT_RTOL


def qtype_of_mlx(name: str) -> Q:
    """The MIX type of an mlx-lm weight name."""
    return mixed(GGUF_NAMES.get_name(name.removesuffix(".weight")) + ".weight")


def test_kquant_layers_take_their_widths(kquant_files):
    path, _, _ = kquant_files["llama"]
    loaded = open_gguf(path)
    q = loaded.config["quantization"]
    assert (q["group_size"], q["bits"]) == (32, 4)  # Q4_K, the commonest
    layer = "model.layers.{}.{}"
    for name, qtype in [
        ("lm_head", Q.Q6_K),
        (layer.format(0, "self_attn.v_proj"), Q.Q6_K),
        (layer.format(1, "self_attn.k_proj"), Q.Q3_K),
        (layer.format(1, "self_attn.o_proj"), Q.Q2_K),
        (layer.format(0, "mlp.up_proj"), Q.Q8_0),
        (layer.format(1, "mlp.gate_proj"), Q.Q5_0),
    ]:
        assert q.get(name, {"group_size": 32, "bits": 4})["bits"] == MIX_BITS[qtype], name
    report = {r.ggml_type: r for r in loaded.quantization_report}
    assert set(report) == {q.name for q in MIX_BITS}
    assert report["Q6_K"].requantized and not report["Q4_K"].requantized
    assert report["Q8_0"].max_abs == 0 and report["Q5_0"].max_abs == 0
    assert 0 < report["Q4_K"].rel_rms < 2e-3  # float16 rounding of the scales alone
    assert report["Q6_K"].rel_rms < 1e-2


def test_kquant_export_loads_in_plain_mlx_lm(kquant_files, tmp_path):
    path, _, _ = kquant_files["gemma3_text"]
    model, tokenizer, config = load_gguf(path)
    out = export_mlx(path, tmp_path / "out")
    model2, tokenizer2 = load(str(out))
    assert mx.array_equal(logits(model, tokenizer), logits(model2, tokenizer2)).item()
    assert json.loads((out / "config.json").read_text()) == config


def test_load_logs_the_error_per_type(kquant_files, caplog):
    caplog.set_level("INFO", logger="mlxd.models.gguf")
    open_gguf(kquant_files["qwen2"][0])
    assert "Q6_K: 2 tensors -> MLX 8-bit (re-quantized): relative RMS error" in caplog.text
    assert "Q8_0: 1 tensors -> MLX 8-bit (codes kept): exact" in caplog.text


# -- Refusals ---------------------------------------------------------------------------------------


def edited(arch_dirs, tmp_path, kind, edit, **overrides) -> Path:
    model_dir = (
        arch_dirs[kind] if not overrides else build_arch_model(tmp_path / kind, kind, **overrides)
    )
    path = tmp_path / f"{kind}-edited.gguf"
    write_model_gguf(path, model_dir, edit=edit)
    return path


@pytest.mark.parametrize(
    "kind,edit,overrides,message",
    [
        (
            "gemma3_text",
            lambda w: w.add_final_logit_softcapping(30.0),
            {},
            "final_logit_softcapping",
        ),
        ("qwen2", lambda w: w.add_expert_count(8), {}, "mixture-of-experts qwen2"),
        ("qwen2", lambda w: None, {"head_dim": 32}, "qwen2 with a head size other than hidden"),
        ("phi3", lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.YARN), {}, "'yarn'"),
    ],
)
def test_refused(arch_dirs, tmp_path, kind, edit, overrides, message):
    with pytest.raises(UnsupportedModelError, match=message):
        load_gguf(edited(arch_dirs, tmp_path, kind, edit, **overrides))


def test_status_shows_what_each_type_became(kquant_files):
    from mlxd.service.config import Config

    from helpers import ServerThread, get_json

    srv = ServerThread(Config(model=str(kquant_files["qwen2"][0]), port=0, max_tokens=8)).start()
    try:
        _, status = get_json(srv.url + "/v1/mlx/status")
    finally:
        srv.close()
    types = {t["ggml_type"]: t for t in status["model"]["gguf_tensor_types"]}
    assert set(types) == {q.name for q in MIX_BITS}
    q6 = types["Q6_K"]
    assert (q6["mlx_bits"], q6["mlx_group_size"], q6["requantized"], q6["tensors"]) == (
        8,
        32,
        True,
        2,
    )
    assert 0 < q6["rel_rms_error"] < 1e-2 and 0 < q6["max_abs_error"]
    assert types["Q8_0"]["max_abs_error"] == 0 and not types["Q8_0"]["requantized"]
    assert status["model"]["type"] == "qwen2"


def test_mlx_directories_have_no_gguf_report(tiny_server):
    from helpers import get_json

    _, status = get_json(tiny_server.url + "/v1/mlx/status")
    assert status["model"]["gguf_tensor_types"] is None
