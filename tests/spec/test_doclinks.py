"""spec/doclinks.py: the release folder's README, INSTALL.md and SERVICE.md link only to files the
folder holds (it keeps them side by side; the source tree keeps docs/ apart)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# What spec/dist.sh copies into the release folder, flat.
SHIPPED = (
    "README.md",
    "LICENSE",
    "spec/mlxd.example.json",
    "docs/INSTALL.md",
    "docs/SERVICE.md",
    "spec/mlxd.service",
    "spec/com.mlxd.server.plist",
)


def test_release_documents_link_to_what_the_release_holds(tmp_path):
    for name in SHIPPED:
        shutil.copy(ROOT / name, tmp_path)
    run = subprocess.run(
        [sys.executable, str(ROOT / "spec" / "doclinks.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    readme = (tmp_path / "README.md").read_text()
    assert "](INSTALL.md)" in readme and "](SERVICE.md)" in readme and "](docs/" not in readme
    assert "`bench/README.md` in the source tree" in readme


def test_a_link_to_nothing_fails(tmp_path):
    (tmp_path / "README.md").write_text("see [x](nowhere/x.md#a) and [y](#anchor)\n")
    run = subprocess.run(
        [sys.executable, str(ROOT / "spec" / "doclinks.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0  # turned into text: nothing left to point at nothing
    assert (tmp_path / "README.md").read_text() == (
        "see x (`nowhere/x.md` in the source tree) and [y](#anchor)\n"
    )
