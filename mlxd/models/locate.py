"""Where MODEL is: a path (an MLX directory or a GGUF file, told apart by content, not name), or a
hub id such as ``mlx-community/SmolLM2-135M-Instruct-4bit`` found where people already keep models:
the Hugging Face cache and LM Studio's models folder. Never a download.

Stdlib only: the command line resolves MODEL before it binds a port or imports mlx, so a model
that is not there is said at once, and said once.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file (gguf spec, "File Structure")
SHOWN_BYTES = 8  # how much of a file's start a "not a GGUF file" message quotes
# ORG/NAME, optionally @REVISION: Hugging Face's repo id grammar (letters, digits, - _ .).
HUB_ID = re.compile(r"^(?P<org>[\w.-]+)/(?P<name>[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
DEFAULT_REVISION = "main"
MLX_WEIGHTS = "*.safetensors"


class ModelNotFound(Exception):
    """MODEL names nothing servable: not there (the message says where mlxd looked and how to get
    the model), or a file that is no model (the message says how it begins)."""


@dataclass(frozen=True)
class Located:
    path: Path  # an MLX model directory or a GGUF file
    name: str  # the model id clients see, unless --served-model-name says otherwise
    source: str  # "path", "huggingface" or "lm-studio"


# ----- what a file is -----


def is_gguf(path: Path) -> bool:
    """Whether ``path`` is a file that starts with GGUF's magic, whatever it is called."""
    try:
        with open(path, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:
        return False


def describe_start(path: Path) -> str:
    """How a file begins, for a message: ``it is empty``, ``it starts with 'hello wo'`` (text) or
    ``it starts with bytes 89 50 4e 47 ...`` (anything else)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SHOWN_BYTES)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror or exc}"
    if not head:
        return "it is empty"
    if all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return f"it starts with {head.decode('ascii')!r}"
    return "it starts with bytes " + " ".join(f"{b:02x}" for b in head)


def not_a_model(path: Path) -> str:
    """Why a file that is not a GGUF file cannot be served, said once."""
    if path.suffix.lower() == ".gguf":
        return f"{path}: not a GGUF file ({describe_start(path)})"
    return f"{path}: neither an MLX model directory nor a GGUF file ({describe_start(path)})"


@contextlib.contextmanager
def gguf_named(path: Path) -> Iterator[Path]:
    """``path``, or while the block runs a ``NAME.gguf`` link to it: mx.load picks its reader by
    the file's extension, and a GGUF file named ``model`` is still one."""
    if path.suffix.lower() == ".gguf":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mlxd-gguf-") as tmp:
        link = Path(tmp) / f"{path.name}.gguf"
        link.symlink_to(path.resolve())
        yield link


def served_name(path: str | Path) -> str:
    """The model id for a path: the directory name, or the file name without ``.gguf``."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path.resolve().name  # "." is its folder's name
    return path.stem if path.suffix.lower() == ".gguf" else path.name


# ----- where a hub id may be -----


def hf_hub_cache() -> Path:
    """huggingface_hub's cache: $HF_HUB_CACHE, else $HF_HOME/hub, else
    $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (huggingface_hub's order)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    cache = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "hub"


def lm_studio_dirs() -> list[Path]:
    """LM Studio's models folders: ~/.lmstudio/models (0.3 and later), ~/.cache/lm-studio/models
    (before), each laid out ORG/NAME/files."""
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def locate(model: str) -> Located:
    """The servable thing ``model`` names, or ModelNotFound saying where mlxd looked."""
    if not model.strip():  # Path("") would be the working directory
        raise ModelNotFound("no model given")
    path = Path(model).expanduser()
    if path.exists():
        return Located(_servable(path, model), served_name(path), "path")
    hub = HUB_ID.match(model)
    if hub is None:
        raise ModelNotFound(f"model not found: {model} (no such file or directory)")
    org, name, revision = hub["org"], hub["name"], hub["revision"] or DEFAULT_REVISION
    repo = f"{org}/{name}"
    looked = [f"no file or directory {path}"]
    snapshot, why = _hf_snapshot(hf_hub_cache() / f"models--{org}--{name}", revision)
    if snapshot is not None:
        return Located(_servable(snapshot, model), repo, "huggingface")
    looked.append(why)
    if hub["revision"] is None:  # LM Studio keeps one copy, without revisions
        for base in lm_studio_dirs():
            folder = base / org / name
            if folder.is_dir():
                return Located(_servable(folder, model), repo, "lm-studio")
            looked.append(f"not in LM Studio's models: no {folder}")
    raise ModelNotFound(_not_found(model, repo, looked))


def _hf_snapshot(repo_dir: Path, revision: str) -> tuple[Path | None, str]:
    """The snapshot folder ``revision`` (a ref such as ``main``, or a commit hash) points at."""
    if not repo_dir.is_dir():
        return None, f"not in the Hugging Face cache: no {repo_dir}"
    snapshots = repo_dir / "snapshots"
    ref = repo_dir / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if (snapshots / commit).is_dir():
            return snapshots / commit, ""
        return (
            None,
            f"in the Hugging Face cache, {ref} names {commit}, but {snapshots / commit} is missing",
        )
    if (snapshots / revision).is_dir():
        return snapshots / revision, ""
    have = sorted(p.name for p in snapshots.iterdir()) if snapshots.is_dir() else []
    if revision == DEFAULT_REVISION and len(have) == 1:  # no refs/main, one snapshot: that one
        return snapshots / have[0], ""
    return None, (
        f"in the Hugging Face cache, {repo_dir} has no revision {revision!r} "
        f"(snapshots: {', '.join(have) or 'none'})"
    )


def _servable(path: Path, given: str) -> Path:
    """``path`` itself when it is an MLX directory or a file; the one GGUF file inside a folder
    that holds GGUF files only (a GGUF repo, an LM Studio download)."""
    if not path.is_dir():
        if not is_gguf(path):
            raise ModelNotFound(not_a_model(path))
        return path
    if (path / "config.json").is_file():
        return path
    ggufs = sorted(f for f in path.iterdir() if f.is_file() and is_gguf(f))
    if len(ggufs) == 1:
        return ggufs[0]
    if len(ggufs) > 1:
        names = "\n".join(f"  {f}" for f in ggufs)
        raise ModelNotFound(f"{given}: {path} holds several GGUF files; name one of them:\n{names}")
    if any(path.glob(MLX_WEIGHTS)):
        return path  # no config.json: the loader says what is missing
    raise ModelNotFound(
        f"{given}: {path} is neither an MLX model directory (no config.json) nor holds a GGUF file"
    )


def _not_found(model: str, repo: str, looked: list[str]) -> str:
    lines = [f"model not found: {model}", *(f"  {why}" for why in looked)]
    lines += [
        "mlxd never downloads a model. On a machine with network access, either",
        f"  huggingface-cli download {repo}           (an MLX repo, into the cache above)",
        f"  mlx_lm.convert --hf-path {repo} -q --mlx-path DIR    (then: mlxd DIR)",
        "or serve a GGUF file you have: mlxd path/to/model.gguf",
    ]
    return "\n".join(lines)
