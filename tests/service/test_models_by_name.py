"""`mlxd ORG/NAME`: a model already in the local Hugging Face cache is served under its hub id,
with no network (the cache laid out here as huggingface_hub lays it out)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from mlxd.service import daemon

ROOT = Path(__file__).resolve().parents[2]
REPO = "mlx-community/Tiny-Llama-4bit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_a_hub_id_from_the_hugging_face_cache(tiny_model_dir, tmp_path):
    repo = tmp_path / "hf" / "hub" / "models--mlx-community--Tiny-Llama-4bit"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLXD_", "HF_"))}
    env = {**clean, "HF_HOME": str(tmp_path / "hf"), "XDG_RUNTIME_DIR": str(tmp_path)}
    log = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxd", REPO, "--port", "0"], cwd=ROOT, env=env, stderr=log
    )
    try:
        entry = tmp_path / "mlxd" / f"{proc.pid}.pid"
        deadline = time.monotonic() + 120
        while not (entry.exists() and '"ready"' in entry.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        info = json.loads(entry.read_text().splitlines()[1])
        assert info["model"] == str(repo / "snapshots" / COMMIT)
        with urllib.request.urlopen(info["url"] + "/v1/models", timeout=30) as resp:
            assert [m["id"] for m in json.loads(resp.read())["data"]] == [REPO]
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    text = (tmp_path / "stderr.log").read_text()
    assert f"{REPO} is {repo / 'snapshots' / COMMIT} (huggingface)" in text
    assert not daemon.process_argv(proc.pid)
