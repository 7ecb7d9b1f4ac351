"""How fast GGUF quantized tensors become MLX weights: a synthetic file with TinyLlama-1.1B-shaped
layers (hidden 2048, ffn 5632, vocab 32000) in a Q4_K_M-like mix (Q4_K, Q6_K for the output,
attn_v and every other ffn_down), random blocks with realistic scales; timed per ggml type
through the reader the server uses (mlxd.models.gguf.tensors.read_tensors).

    python bench/gguf_load.py [--layers 4] [--types Q4_K,Q6_K,Q5_K,Q3_K,Q2_K,Q8_0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from mlxd.models.gguf import quants, repack  # noqa: E402
from mlxd.models.gguf.header import read_header  # noqa: E402
from mlxd.models.gguf.tensors import read_tensors  # noqa: E402

from ggmlblocks import random_blocks  # noqa: E402

HIDDEN, FFN, VOCAB = 2048, 5632, 32000


def layer_plan(i: int) -> list[tuple[str, tuple[int, int], Q]]:
    ffn_down = Q.Q6_K if i % 2 == 0 else Q.Q4_K
    return [
        (f"blk.{i}.attn_q.weight", (HIDDEN, HIDDEN), Q.Q4_K),
        (f"blk.{i}.attn_k.weight", (256, HIDDEN), Q.Q4_K),
        (f"blk.{i}.attn_v.weight", (256, HIDDEN), Q.Q6_K),
        (f"blk.{i}.attn_output.weight", (HIDDEN, HIDDEN), Q.Q4_K),
        (f"blk.{i}.ffn_gate.weight", (FFN, HIDDEN), Q.Q4_K),
        (f"blk.{i}.ffn_up.weight", (FFN, HIDDEN), Q.Q4_K),
        (f"blk.{i}.ffn_down.weight", (HIDDEN, FFN), ffn_down),
    ]


def write(path: Path, layers: int, extra: list[Q]) -> int:
    plan = [
        ("token_embd.weight", (VOCAB, HIDDEN), Q.Q4_K),
        ("output.weight", (VOCAB, HIDDEN), Q.Q6_K),
    ]
    for i in range(layers):
        plan += layer_plan(i)
    plan += [(f"extra.{q.name}.weight", (FFN, HIDDEN), q) for q in extra]
    w = gguf.GGUFWriter(str(path), "llama")
    for seed, (name, (rows, cols), qtype) in enumerate(plan):
        w.add_tensor(name, random_blocks(qtype, rows, cols, seed, scale=1e-4), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(r * c for _, (r, c), _ in plan)


def per_type(path: Path) -> None:
    header = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    seconds: dict[str, float] = defaultdict(float)
    weights: dict[str, int] = defaultdict(int)
    for info in header.tensors.values():
        rows, cols = info.shape
        raw = data[info.offset : info.offset + rows * quants.row_bytes(info.ggml_type, cols)]
        start = time.perf_counter()
        repack.to_mlx(raw.reshape(rows, -1), info.ggml_type, info.name)
        name = gguf.GGMLQuantizationType(info.ggml_type).name
        seconds[name] += time.perf_counter() - start
        weights[name] += rows * cols
    for name in sorted(seconds):
        rate = seconds[name] / weights[name] * 1e9
        print(
            f"  {name:6s} {weights[name] / 1e6:8.1f} M weights {seconds[name]:7.2f} s {rate:6.1f} ns/weight"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--types", default="Q5_K,Q3_K,Q2_K,Q8_0", help="one extra tensor each")
    args = parser.parse_args()
    extra = [Q[t] for t in args.types.split(",") if t]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.gguf"
        total = write(path, args.layers, extra)
        print(f"{path.stat().st_size / 2**20:.0f} MiB, {total / 1e6:.0f} M weights")
        per_type(path)
        start = time.perf_counter()
        read_tensors(path, read_header(path))
        elapsed = time.perf_counter() - start
        print(f"read_tensors: {elapsed:.2f} s ({elapsed / total * 1e9:.1f} ns/weight)")


if __name__ == "__main__":
    main()
