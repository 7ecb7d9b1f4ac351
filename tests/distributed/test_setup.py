"""Setting a group up, without starting one: what the launcher told us, the refusals, the
launcher's command line, the strict join, and each rank's share of the model."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest

from mlxd import cli
from mlxd.models import pipeline, shard
from mlxd.models.group import Group, GroupError, join
from mlxd.models.loader import ModelLoadError
from mlxd.service import ranks

from group import FakeHandle


def test_what_the_launcher_says(tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([["127.0.0.1:5000"], ["127.0.0.1:5001"], ["127.0.0.1:5002"]]))
    assert ranks.launched_rank({}) is None
    assert ranks.launched_rank({"MLX_RANK": "2"}) == 2
    assert ranks.launched_rank({"OMPI_COMM_WORLD_RANK": "1"}) == 1
    assert ranks.expected_size("ring", {"MLX_HOSTFILE": str(hosts)}) == 3
    assert ranks.expected_size("nccl", {"MLX_WORLD_SIZE": "2"}) == 2
    assert ranks.expected_size("mpi", {"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert ranks.expected_size("jaccl", {}) is None


def test_the_launcher_runs_this_command_on_every_rank():
    argv = ["m", "--backend", "nccl", "--distributed", "2", "--port", "9"]
    got = ranks.launcher_argv(argv, "2", "nccl", python="/py", frozen=False, port=7000)
    assert got == [
        "mlx.launch", "--backend", "nccl", "--hosts", "127.0.0.1", "-n", "2", "--nccl-port",
        "7000", "--python", "/py", "--", "-m", "mlxd", "m", "--backend", "nccl", "--port", "9",
    ]  # fmt: skip
    hostfile = ["m", "--distributed=h.json"]
    got = ranks.launcher_argv(hostfile, "h.json", "ring", python="/py", frozen=True, port=7000)
    assert got[:7] == [
        "mlx.launch",
        "--backend",
        "ring",
        "--hostfile",
        "h.json",
        "--starting-port",
        "7000",
    ]
    assert got[7:9] == ["--", got[8]] and got[9:] == ["m"]
    first = ranks.free_ports(3)
    assert 0 < first < 65534


@pytest.mark.parametrize(
    "argv, env, words",
    [
        (["m", "--distributed", "2"], {}, "without --backend"),
        (["m"], {"MLX_RANK": "1"}, "without --backend"),
        (["m", "--backend", "ring", "--adapter", "a"], {}, "--adapter"),
        (["m", "--backend", "ring", "--daemon"], {}, "--daemon"),
    ],
)
def test_settings_that_cannot_start_a_group_are_refused(argv, env, words, monkeypatch, capsys):
    for key in ranks.RANK_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == cli.EXIT_USAGE and words in capsys.readouterr().err


def test_the_join_is_strict_and_checks_the_size():
    def init(size, fail=False):
        def go(strict, backend):
            assert strict and backend == "ring"
            if fail:
                raise RuntimeError("no hostfile")
            return FakeHandle(0, size)

        return go

    group = join("ring", pipeline=True, expected=2, step_timeout=5, init=init(2))
    assert (group.rank, group.size, group.mode, group.leader) == (0, 2, "pipeline", True)
    with pytest.raises(GroupError, match="group of 1 where the launcher started 2"):
        join("ring", pipeline=False, expected=2, step_timeout=5, init=init(1))
    with pytest.raises(GroupError, match="group of 1"):
        join("ring", pipeline=False, expected=None, step_timeout=5, init=init(1))
    with pytest.raises(GroupError, match="no hostfile"):
        join("ring", pipeline=False, expected=2, step_timeout=5, init=init(2, fail=True))


@pytest.fixture
def tiny(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir), return_config=True)


def test_tensor_parallel_needs_heads_that_divide(tiny):
    model, _tok, config = tiny
    three = Group(FakeHandle(0, 3), 0, 3, "ring", "tensor", 5)
    with pytest.raises(ModelLoadError, match="num_attention_heads = 4 does not divide among 3"):
        shard.split(model, config, three)


def test_a_model_without_a_pipeline_split_is_refused():
    class NoSplit:
        model = object()

    two = Group(FakeHandle(0, 2), 0, 2, "ring", "pipeline", 5)
    with pytest.raises(ModelLoadError, match="no pipeline split for 'x'"):
        shard.split(NoSplit(), {"model_type": "x"}, two)


def test_llama_pipelined_on_one_rank_computes_what_it_did(tiny):
    from mlx_lm.models.cache import make_prompt_cache

    model, _tok, _config = tiny
    tokens = mx.array([[5, 6, 7, 8]])
    want = model(tokens, cache=make_prompt_cache(model))
    assert pipeline.enable(model) and not pipeline.enable(model)
    model.model.pipeline(mx.distributed.init())  # a group of one: every layer, no transfers
    got = model(tokens, cache=make_prompt_cache(model))
    assert mx.allclose(got, want).item()


def test_a_pipeline_rank_needs_only_the_files_of_its_layers(tiny, tmp_path):
    model, _tok, _config = tiny
    pipeline.enable(model)
    model.model.pipeline(FakeHandle(0, 2))  # rank 0 runs the last of the 2 layers
    index = {
        "weight_map": {
            "model.layers.0.mlp.up_proj.weight": "first.safetensors",
            "model.layers.1.mlp.up_proj.weight": "second.safetensors",
            "model.norm.weight": "second.safetensors",
        }
    }
    (tmp_path / shard.INDEX_FILE).write_text(json.dumps(index))
    rank0 = Group(FakeHandle(0, 2), 0, 2, "ring", "pipeline", 5)
    with pytest.raises(ModelLoadError, match="rank 0 needs second.safetensors"):
        shard._check_files(tmp_path, model, rank0)
    (tmp_path / "second.safetensors").write_bytes(b"")
    shard._check_files(tmp_path, model, rank0)  # first.safetensors holds no layer of rank 0's
    tensor = Group(FakeHandle(0, 2), 0, 2, "ring", "tensor", 5)
    with pytest.raises(ModelLoadError, match="first.safetensors"):
        shard._check_files(tmp_path, model, tensor)


def test_a_dense_share_is_dequantized_before_the_split(tmp_path):
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model

    from tinymodel import build_tiny_model

    path = build_tiny_model(tmp_path / "q4", quantize_bits=4)
    one = Group(mx.distributed.init(), 0, 1, "ring", "tensor", 5)  # a group of one: no transfers
    tokens = mx.array([[5, 6, 7, 8]])
    want = dequantize_model(load(str(path))[0])(tokens)
    for weights, scaled in (("dense", False), ("quantized", True)):
        model = shard.load_shard(path, one, weights).model
        assert any(k.endswith("scales") for k, _ in tree_flatten(model.parameters())) == scaled
    assert mx.allclose(model(tokens), load(str(path))[0](tokens)).item()
    assert mx.allclose(shard.load_shard(path, one, "dense").model(tokens), want).item()


def test_mlx_lm_own_pipelines_are_refused_on_nccl():
    from mlx_lm.models import qwen2

    def qwen():
        args = qwen2.ModelArgs(
            model_type="qwen2",
            hidden_size=16,
            num_hidden_layers=2,
            intermediate_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            rms_norm_eps=1e-5,
            vocab_size=10,
        )
        return qwen2.Model(args)

    nccl = Group(FakeHandle(0, 2), 0, 2, "nccl", "pipeline", 5)
    with pytest.raises(ModelLoadError, match="send/recv"):
        shard.split(qwen(), {"model_type": "qwen2"}, nccl)
    model = qwen()
    shard.split(
        model, {"model_type": "qwen2"}, Group(FakeHandle(0, 2), 0, 2, "ring", "pipeline", 5)
    )
    assert model.model.start_idx == 1  # rank 0 keeps the last layer
