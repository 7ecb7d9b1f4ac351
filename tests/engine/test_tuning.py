"""Device-aware defaults: what auto comes to for made-up devices and models (a pure function)."""

from __future__ import annotations

from mlxd.engine import tuning
from mlxd.engine.tuning import ModelFacts, choose, kv_bytes_from_config
from mlxd.models.device import DeviceFacts

GiB = 2**30
# An 8B llama at 4 bits with its dense twin (4.2 + 16 GB), 128 KiB of KV per token, context 8192.
LLAMA_8B = ModelFacts(weight_bytes=20 * GiB, kv_bytes_per_token=128 * 1024, context_length=8192)
SMOLLM = ModelFacts(
    weight_bytes=int(0.1 * GiB), kv_bytes_per_token=9 * 1024 * 2, context_length=2048
)


def test_cpu_keeps_the_measured_defaults_whatever_the_memory():
    for memory in (8 * GiB, 512 * GiB, None):
        chosen = choose(DeviceFacts("cpu", memory), SMOLLM)
        assert (chosen.max_batch_size, chosen.prefill_step_size) == (8, 512)
        assert chosen.memory_share == tuning.MEMORY_SHARE["cpu"] < tuning.MEMORY_SHARE["cuda"]


def test_a_big_gpu_takes_the_cap():
    chosen = choose(DeviceFacts("cuda", 141 * GiB, "NVIDIA H200"), LLAMA_8B)
    assert chosen.max_batch_size == tuning.GPU_MAX_BATCH["cuda"] == 128
    assert chosen.prefill_step_size == tuning.GPU_PREFILL_STEP
    assert any("max batch size 128" in r for r in chosen.reasons)


def test_memory_limits_the_batch_on_a_small_gpu():
    # 16 GB Mac: 0.9 * 16 - 4.5 GB of weights = 9.9 GB; 512 MiB per stream of 4096 tokens.
    model = ModelFacts(int(4.5 * GiB), 128 * 1024, 8192)
    chosen = choose(DeviceFacts("metal", 16 * GiB), model)
    assert chosen.max_batch_size == 16  # 19 streams fit, in multiples of 8
    # A short context plans fewer tokens per stream, so more streams fit.
    short = ModelFacts(int(4.5 * GiB), 128 * 1024, 1024)
    assert choose(DeviceFacts("metal", 16 * GiB), short).max_batch_size == 64  # Metal's cap


def test_a_model_that_barely_fits_still_batches_a_little():
    model = ModelFacts(int(15 * GiB), 128 * 1024, 8192)
    assert choose(DeviceFacts("cuda", 16 * GiB), model).max_batch_size == tuning.GPU_MIN_BATCH


def test_unknown_memory_or_model_gives_the_device_cap():
    assert choose(DeviceFacts("cuda", None), LLAMA_8B).max_batch_size == 128
    assert choose(DeviceFacts("metal", 64 * GiB), None).max_batch_size == 64


def test_explicit_settings_win_and_give_no_reason():
    chosen = choose(DeviceFacts("cuda", 141 * GiB), LLAMA_8B, max_batch_size=3, prefill_step_size=7)
    assert (chosen.max_batch_size, chosen.prefill_step_size, chosen.reasons) == (3, 7, ())


def test_kv_bytes_from_config():
    llama8b = {
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_size": 4096,
    }
    assert kv_bytes_from_config(llama8b) == 128 * 1024
    assert kv_bytes_from_config({**llama8b, "head_dim": 64}) == 64 * 1024
    assert kv_bytes_from_config({"text_config": llama8b}) == 128 * 1024
    assert kv_bytes_from_config({"num_hidden_layers": 2}) is None
