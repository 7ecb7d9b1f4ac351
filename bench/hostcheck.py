#!/usr/bin/env python3
"""What kind of host a GPU run landed on, in ~15 s: to tell a slow GPU from a slow CPU.

    python bench/hostcheck.py [--out host.json]

The same image decoded 32 streams of an 8B model in 16-19 ms a step on some H200 hosts and in
9-10 ms on others (bench/results/gpu-h200-ab-session6-20261130.txt), while mlx_lm.server did not
move. A decode step at these sizes is mostly the host building and launching kernels, so this
times both sides apart:

- host: CPU model, cores, load; a pure-Python loop (the interpreter's speed);
- launches: a chain of small MLX ops evaluated at once (microseconds per op, the host's share);
- GPU: a dense bf16 matmul at decode's shape (32 x 4096 by 4096 x 14336, weight bytes read per
  second), a 4-bit quantized one at batch 1, and nvidia-smi's clocks, power limit and state.

Prints one line per figure and writes them as JSON with --out. Runs on a CPU too (MLX's CPU
device; nvidia-smi absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time

import mlx.core as mx

SMI_FIELDS = (
    "name,driver_version,power.limit,power.max_limit,clocks.sm,clocks.max.sm,clocks.mem,"
    "clocks.max.mem,pstate,temperature.gpu,utilization.gpu,memory.used"
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def smi() -> dict:
    try:
        out = (
            subprocess.run(
                ["nvidia-smi", f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            .stdout.strip()
            .splitlines()
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    names = SMI_FIELDS.split(",")
    return {
        "gpus": [
            dict(zip(names, (v.strip() for v in line.split(",")), strict=False)) for line in out
        ]
    }


def best(fn, reps: int) -> float:
    """The fastest of ``reps`` timed runs of ``fn`` (seconds), after one untimed run."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def python_loop() -> float:
    def loop():
        total = 0
        for i in range(1_000_000):
            total += i & 7
        return total

    return best(loop, 3)


def launch_us(n_ops: int = 2000) -> float:
    x = mx.ones((1, 64), dtype=mx.bfloat16)
    mx.eval(x)

    def chain():
        y = x
        for _ in range(n_ops):
            y = y * 1.0001 + 0.0001
        mx.eval(y)

    return best(chain, 5) / (2 * n_ops) * 1e6  # two ops (multiply, add) a round


def dense_gbs(batch: int = 32, d: int = 4096, h: int = 14336, reps: int = 20) -> float:
    x = mx.random.normal((batch, d)).astype(mx.bfloat16)
    w = mx.random.normal((h, d)).astype(mx.bfloat16)
    mx.eval(x, w)

    def run():
        outs = [x @ w.T for _ in range(reps)]
        mx.eval(outs)

    return reps * w.nbytes / best(run, 3) / 1e9


def quantized_gbs(d: int = 4096, h: int = 14336, reps: int = 20) -> float:
    x = mx.random.normal((1, d)).astype(mx.bfloat16)
    wq, scales, biases = mx.quantize(mx.random.normal((h, d)).astype(mx.bfloat16), bits=4)
    mx.eval(x, wq, scales, biases)
    nbytes = wq.nbytes + scales.nbytes + biases.nbytes

    def run():
        mx.eval([mx.quantized_matmul(x, wq, scales, biases, bits=4) for _ in range(reps)])

    return reps * nbytes / best(run, 3) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out")
    args = p.parse_args()
    found: dict = {
        "node": platform.node(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        **smi(),
    }
    found["python_loop_1e6_s"] = round(python_loop(), 4)
    found["launch_us_per_op"] = round(launch_us(), 2)
    h = 14336 if mx.default_device() == mx.gpu else 1024  # the CPU: a glimpse, not 90 s
    found[f"dense_bf16_32x4096x{h}_GBps"] = round(dense_gbs(h=h), 1)
    found[f"q4_1x4096x{h}_GBps"] = round(quantized_gbs(h=h), 1)
    for key, value in found.items():
        print(f"{key}: {value}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(found, f, indent=1)


if __name__ == "__main__":
    main()
