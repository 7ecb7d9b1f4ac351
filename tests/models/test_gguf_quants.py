"""mlxd.models.gguf.quants and repack: ggml's block formats read bit for bit as gguf-py's
``dequantize`` reads them (blocks of random bytes, and blocks a quantizer wrote), MLX's packing,
and what each format becomes in MLX, with its error measured against the exact values."""

from __future__ import annotations

from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from mlxd.models.gguf import quants, repack
from mlxd.models.gguf.header import UnsupportedModelError

from ggmlblocks import encode, random_blocks

ALL = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.IQ4_NL, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_QUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
EXACT = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.IQ4_NL]


def gaussian(rows: int = 64, cols: int = 1024, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.02).astype(np.float32)


def rel_rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(np.square(got - want).sum() / np.square(want).sum()))


def mlx_values(packed: repack.Packed) -> np.ndarray:
    """What MLX computes the weights as: code * scale + bias, in float32."""
    out = mx.dequantize(
        mx.array(packed.weight),
        mx.array(packed.scales).astype(mx.float32),
        mx.array(packed.biases).astype(mx.float32),
        group_size=repack.MLX_GROUP,
        bits=packed.bits,
    )
    return np.array(out)


# -- Reading ggml blocks --------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", ALL, ids=lambda q: q.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blocks_decode_bit_for_bit_as_gguf_py(qtype, seed):
    # Random bytes reach every code, sub-scale and high-bit pattern; only d/dmin are kept valid.
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    raw = random_blocks(qtype, 8, block * 3, seed=seed)
    want = gguf.quants.dequantize(raw, qtype)
    got = quants.decode(raw, qtype).values()
    assert got.dtype == np.float32 and got.shape == want.shape == (8, block * 3)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))  # signed zeros too


@pytest.mark.parametrize("qtype", ALL, ids=lambda q: q.name)
def test_quantized_weights_decode_bit_for_bit_as_gguf_py(qtype):
    w = gaussian()
    raw = encode(w, qtype)
    want = gguf.quants.dequantize(raw, qtype)
    assert np.array_equal(quants.decode(raw, qtype).values().view(np.uint32), want.view(np.uint32))
    assert rel_rms(want, w) < 0.4  # the blocks hold these weights (Q2_K's own error is ~0.3)


def test_decode_keeps_codes_scales_and_offsets_apart():
    w = gaussian(4, 256)
    affine = quants.decode(encode(w, Q.Q4_K), Q.Q4_K)
    assert affine.codes.shape == (4, 256) and affine.codes.max() <= 15
    assert affine.scales.shape == affine.offsets.shape == (4, 8) and affine.group == 32
    affine = quants.decode(encode(w, Q.Q6_K), Q.Q6_K)
    assert affine.offsets is None and affine.zero == 32 and affine.group == 16
    assert np.allclose(affine.biases(), affine.scales * -32)


# -- MLX packing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_pack_is_mlx_layout(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (3, 128), dtype=np.uint8)
    scales = rng.standard_normal((3, 4)).astype(np.float32)
    biases = rng.standard_normal((3, 4)).astype(np.float32)
    packed = repack.pack(codes, bits)
    assert packed.dtype == np.uint32 and packed.shape == (3, 128 * bits // 32)
    got = mx.dequantize(
        mx.array(packed), mx.array(scales), mx.array(biases), group_size=32, bits=bits
    )
    want = codes.reshape(3, 4, 32) * scales[..., None] + biases[..., None]
    assert np.array_equal(np.array(got), want.reshape(3, 128))


# -- To MLX, and the error --------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", EXACT, ids=lambda q: q.name)
def test_formats_with_float16_fields_are_exact(qtype):
    raw = encode(gaussian(), qtype)
    packed, err = repack.to_mlx(raw, qtype, "t")
    assert packed.bits == repack.MLX_BITS[qtype]
    assert np.array_equal(mlx_values(packed), quants.decode(raw, qtype).values())
    assert err.max_abs == 0


@pytest.mark.parametrize("qtype,bits", [(Q.Q4_K, 4), (Q.Q5_K, 5)], ids=["Q4_K", "Q5_K"])
def test_k_quants_with_32_weight_groups_keep_their_codes(qtype, bits):
    raw = encode(gaussian(), qtype)
    packed, err = repack.to_mlx(raw, qtype, "t")
    exact = quants.decode(raw, qtype).values()
    got = mlx_values(packed)
    assert packed.bits == bits
    # Only the float16 rounding of each group's scale and minimum moves a weight.
    assert 0 < rel_rms(got, exact) < 2e-3
    codes = quants.decode(raw, qtype).codes
    assert np.array_equal(packed.weight, repack.pack(codes, bits))
    # Every row is measured in a tensor this small: the report is the error itself.
    assert err.count == exact.size
    assert err.rel_rms == pytest.approx(rel_rms(got, exact), rel=1e-4)
    assert err.max_abs == pytest.approx(np.abs(got - exact).max(), rel=1e-4)


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q6_K], ids=lambda q: q.name)
def test_16_weight_groups_are_requantized_well_under_their_own_error(qtype):
    w = gaussian()
    raw = encode(w, qtype)
    exact = quants.decode(raw, qtype).values()
    packed, err = repack.to_mlx(raw, qtype, "t")
    own = rel_rms(exact, w)  # what the format itself costs against the original weights
    added = rel_rms(mlx_values(packed), exact)
    assert err.rel_rms == pytest.approx(added, rel=1e-4)
    # The width is picked so the re-quantization adds at most ~3% to the total error.
    assert added < 0.3 * own
    assert rel_rms(mlx_values(packed), w) < 1.05 * own


def test_large_tensors_convert_in_chunks_and_measure_a_sample(monkeypatch):
    raw = encode(gaussian(rows=48, cols=512), Q.Q6_K)
    whole, whole_err = repack.to_mlx(raw, Q.Q6_K, "t")
    monkeypatch.setattr(repack, "CHUNK_WEIGHTS", 512 * 5)  # 5 rows a chunk, the last one short
    monkeypatch.setattr(repack, "ERROR_SAMPLE_WEIGHTS", 512 * 7)  # 7 rows measured
    chunked, err = repack.to_mlx(raw, Q.Q6_K, "t")
    for part in ("weight", "scales", "biases"):
        assert np.array_equal(getattr(whole, part), getattr(chunked, part))
    assert err.count == 512 * 7 and whole_err.count == 48 * 512
    assert err.rel_rms == pytest.approx(whole_err.rel_rms, rel=0.3)


def test_scales_past_float16_are_refused():
    raw = random_blocks(Q.Q4_K, 1, 256, scale=1e4)  # d * 63 overflows float16
    with pytest.raises(UnsupportedModelError, match=r"tensor blk\.0\.x\.weight \(Q4_K\)"):
        repack.to_mlx(raw, Q.Q4_K, "blk.0.x.weight")


def test_report_per_type():
    measured = [
        (int(Q.Q6_K), repack.TensorError(4e-6, 1.0, 1e-3, 10)),
        (int(Q.Q6_K), repack.TensorError(1e-6, 4.0, 2e-3, 10)),
        (int(Q.Q8_0), repack.TensorError(0.0, 0.0, 0.0, 0)),
    ]
    q8, q6 = repack.summarize(measured)
    assert (q6.ggml_type, q6.tensors, q6.bits, q6.requantized) == ("Q6_K", 2, 8, True)
    assert q6.rel_rms == pytest.approx(1e-3) and q6.worst_rel_rms == pytest.approx(2e-3)
    assert q6.max_abs == 2e-3
    assert q6.as_json() == {
        "ggml_type": "Q6_K",
        "tensors": 2,
        "mlx_bits": 8,
        "mlx_group_size": 32,
        "requantized": True,
        "rel_rms_error": 0.001,
        "worst_rel_rms_error": 0.002,
        "max_abs_error": 0.002,
    }
    assert "re-quantized" in q6.line() and "1.00e-03" in q6.line()
    assert q8.line() == "Q8_0: 1 tensors -> MLX 8-bit (codes kept): exact"


def test_same_triples_as_mx_load(tmp_path):
    # mx.load's own GGUF reader serves files of these types alone (it is faster); both readers
    # must give the very same MLX weights.
    w, path = gaussian(8, 128), tmp_path / "legacy.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        writer.add_tensor(f"{qtype.name}.weight", encode(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    loaded = mx.load(str(path))
    for qtype in (Q.Q4_0, Q.Q4_1, Q.Q8_0):
        packed, _ = repack.to_mlx(encode(w, qtype), qtype, "t")
        for part, ours in (
            ("weight", packed.weight),
            ("scales", packed.scales),
            ("biases", packed.biases),
        ):
            assert np.array_equal(np.array(loaded[f"{qtype.name}.{part}"]), ours), (qtype, part)


def test_a_quantized_tensor_must_be_a_matrix_of_whole_blocks(tmp_path):
    from mlxd.models.gguf import load_gguf

    path, w = tmp_path / "odd.gguf", gguf.GGUFWriter(str(tmp_path / "odd.gguf"), "llama")
    w.add_tensor("token_embd.weight", np.zeros((8, 64), np.float32))
    # 3 blocks of Q4_K bytes declared as a 1-D tensor of 768 weights
    w.add_tensor("blk.0.ffn_down.weight", random_blocks(Q.Q4_K, 1, 768)[0], raw_dtype=Q.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(
        UnsupportedModelError, match=r"blk\.0\.ffn_down\.weight: quantized, but not a matrix"
    ):
        load_gguf(path)


SMOLLM = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm_k_mix(name: str) -> Q | None:
    """The MLP's down projections as K-quants (the only matrices of SmolLM2 whose rows, 1536,
    are whole K-blocks): Q6_K and Q4_K by turns; the rest as they are (Q4_1, Q8_0)."""
    if ".ffn_down." in name:
        return Q.Q6_K if int(name.split(".")[1]) % 2 == 0 else Q.Q4_K
    return None


def exact_model(path: Path, config: dict):
    """The model of a GGUF file with every weight dense, at the exact values gguf-py decodes."""
    from mlxd.models.gguf import archs
    from mlxd.models.gguf.tensors import build_model, mlx_weights

    from ggufwrite import read_exact

    metadata, exact = read_exact(path)
    tensors = {name: mx.array(values) for name, values in exact.items()}
    arch = archs.ARCHITECTURES[metadata["general.architecture"]]
    dense = {k: v for k, v in config.items() if k != "quantization"}
    return build_model(dense, mlx_weights(tensors, dense, arch), arch)[0]


@pytest.mark.smollm
@pytest.mark.skipif(not SMOLLM.exists(), reason="run `make model` to fetch SmolLM2")
def test_smollm2_in_k_quants_loads_faithfully(tmp_path):
    # The reference is the same file's exact values, dense: what a wrong layout, scale or width
    # would move is the logits, not whether this tiny model still says Paris (its answer flips
    # with the test encoder's own error, 2-4% per K-quant tensor).
    from mlxd.models.gguf import open_gguf

    from ggufwrite import requantized_copy

    path = requantized_copy(SMOLLM, tmp_path / "k.gguf", smollm_k_mix)
    loaded = open_gguf(path)
    report = {r.ggml_type: r for r in loaded.quantization_report}
    assert report["Q6_K"].tensors == report["Q4_K"].tensors == 15
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = mx.array([loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True)])
    got = loaded.model(prompt)[0].astype(mx.float32)
    want = exact_model(path, loaded.config)(prompt)[0].astype(mx.float32)
    # measured: 8.5e-3 of the largest logit, every position's argmax the same
    assert (mx.abs(got - want).max() / mx.abs(want).max()).item() < 2e-2
    assert (got.argmax(-1) == want.argmax(-1)).astype(mx.float32).mean().item() >= 0.9
