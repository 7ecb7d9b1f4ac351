"""make bench-dist: what the frozen mlxd costs, one-folder (shipped) against one-file and the venv.

    python spec/bench_dist.py [--runs 10] [--ready-runs 3] [--no-onefile] [--reuse] [--json FILE]

Measures, on this machine:
- build time of both bundles (PyInstaller, fresh work folder each) and their size: the one-folder
  tree, the release tarball, the one-file executable;
- wall time of `mlxd --version` and of `mlxd --stop` with nothing running (median and min of
  --runs): the commands that must answer in a blink. A one-file build pays its unpacking here;
- time from exec to GET /health == 200 on SmolLM2 (median and min of --ready-runs).

Warm page cache: every bundle is run once before timing. HOME and XDG_RUNTIME_DIR point into a
temporary folder, so PID files never touch the user's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
BENCH = ROOT / "build" / "bench"
READY_TIMEOUT_S = 180
POLL_S = 0.02


def build(bundle: str, reuse: bool) -> tuple[Path, float | None]:
    """Freeze spec/mlxd.spec as ``bundle`` into build/bench/BUNDLE; the executable and seconds
    (None when ``reuse`` found an earlier build there)."""
    dist, work = BENCH / bundle / "dist", BENCH / bundle / "work"
    exe = dist / "mlxd" / "mlxd" if bundle == "onedir" else dist / "mlxd"
    if reuse and exe.is_file():
        return exe, None
    shutil.rmtree(dist, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [
            str(VENV / "bin" / "pyinstaller"),
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(dist),
            "--workpath",
            str(work),
            str(ROOT / "spec" / "mlxd.spec"),
        ],
        check=True,
        env={**os.environ, "MLXD_BUNDLE": bundle},
        cwd=ROOT,
    )
    return exe, time.perf_counter() - start


def tree_bytes(path: Path) -> int:
    """Bytes on disk as a user sees them in `ls -l`: files, not the symlinks' targets twice."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def wall(cmd: list[str], env: dict, runs: int, ok=(0,)) -> dict:
    subprocess.run(cmd, env=env, capture_output=True)  # warm the page cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
        if done.returncode not in ok:
            raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr.decode()}")
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def exec_to_ready(cmd: list[str], env: dict, runs: int) -> dict:
    times = []
    for _ in range(runs):
        port = free_port()
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, str(SMOLLM), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            while not healthy(port):
                if proc.poll() is not None:
                    raise SystemExit(
                        f"{cmd[0]} exited {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}"
                    )
                if time.perf_counter() - start > READY_TIMEOUT_S:
                    raise SystemExit(f"{cmd[0]}: not ready in {READY_TIMEOUT_S}s")
                time.sleep(POLL_S)
            times.append(time.perf_counter() - start)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs of --version and --stop")
    ap.add_argument("--ready-runs", type=int, default=3, help="runs of exec-to-ready on SmolLM2")
    ap.add_argument("--no-onefile", action="store_true", help="skip building the one-file bundle")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="time the bundles already in build/bench instead of building them again",
    )
    ap.add_argument("--json", type=Path, default=BENCH / "bench.json")
    args = ap.parse_args()
    dist_bin = ROOT / "dist" / "mlxd"
    tarballs = sorted((ROOT / "dist").glob("mlxd-*.tar.gz"))
    if not dist_bin.exists() or not tarballs or not SMOLLM.exists():
        raise SystemExit("bench_dist: needs dist/ (make dist) and the SmolLM2 model (make model)")

    results: dict[str, dict] = {}
    # Built again only to time the build; the timings below run dist/mlxd, the shipped one.
    _, onedir_build = build("onedir", args.reuse)
    results["onedir (shipped)"] = {
        "exe": str(dist_bin),
        "build_s": onedir_build,
        "size_bytes": tree_bytes(dist_bin.resolve().parent),
        "tarball_bytes": tarballs[-1].stat().st_size,
    }
    if not args.no_onefile:
        onefile_bin, onefile_build = build("onefile", args.reuse)
        results["onefile"] = {
            "exe": str(onefile_bin),
            "build_s": onefile_build,
            "size_bytes": tree_bytes(onefile_bin),
        }
    results["venv"] = {"exe": str(VENV / "bin" / "mlxd")}

    with tempfile.TemporaryDirectory(prefix="mlxd-bench.") as tmp:
        (Path(tmp) / "run").mkdir(mode=0o700)
        env = {**os.environ, "HOME": tmp, "XDG_RUNTIME_DIR": str(Path(tmp) / "run")}
        for name, r in results.items():
            exe = r["exe"]
            print(f"bench_dist: {name}: --version, --stop ...", flush=True)
            r["version"] = wall([exe, "--version"], env, args.runs)
            r["stop_idle"] = wall(
                [exe, "--stop", "--port", str(free_port())], env, args.runs, ok=(3,)
            )  # 3: nothing was running
            print(f"bench_dist: {name}: exec to ready on SmolLM2 ...", flush=True)
            r["ready_smollm2"] = exec_to_ready([exe], env, args.ready_runs)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(report(results))
    print(
        f"\n(raw numbers in {args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json})"
    )
    return 0


def report(results: dict[str, dict]) -> str:
    def ms(m: dict) -> str:
        return f"{m['median_s'] * 1000:.0f} ms (min {m['min_s'] * 1000:.0f})"

    def mib(n: int | None) -> str:
        return f"{n / 2**20:.0f} MiB" if n else "-"

    rows = [
        "| build | build time | size | tarball | `--version` | `--stop` (idle) | exec -> /health ready (SmolLM2) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        build_s = f"{r['build_s']:.0f} s" if r.get("build_s") is not None else "-"
        ready = r["ready_smollm2"]
        rows.append(
            f"| {name} | {build_s} | {mib(r.get('size_bytes'))} | {mib(r.get('tarball_bytes'))} "
            f"| {ms(r['version'])} | {ms(r['stop_idle'])} "
            f"| {ready['median_s']:.2f} s (min {ready['min_s']:.2f}) |"
        )
    if "onefile" in results:
        unpack = (
            results["onefile"]["version"]["median_s"]
            - results["onedir (shipped)"]["version"]["median_s"]
        )
        rows.append(
            f"\nOne-file unpacking costs {unpack * 1000:.0f} ms on every start "
            "(its --version minus the one-folder --version)."
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
