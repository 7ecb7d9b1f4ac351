"""locate.py: MODEL as a path (GGUF told by its magic bytes), or a hub id found in the local
Hugging Face cache or LM Studio's models folder, laid out here as those tools lay them out."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlxd.models import locate as loc
from mlxd.models.locate import ModelNotFound, locate

GGUF_BYTES = b"GGUF\x03\x00\x00\x00" + b"\x00" * 24  # magic and version; enough to be told apart
REPO = "mlx-community/SmolLM2-135M-Instruct-4bit"
COMMIT = "a" * 40


@pytest.fixture(autouse=True)
def homes(tmp_path, monkeypatch):
    """A HOME of our own, and no Hugging Face variables from the developer's shell."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "home"


def mlx_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return path


def hf_repo(hub: Path, repo: str = REPO, *, refs=None, snapshots=(COMMIT,)) -> Path:
    """models--ORG--NAME/{refs/main, snapshots/<sha>/...} as huggingface_hub writes it."""
    org, name = repo.split("/")
    root = hub / f"models--{org}--{name}"
    for sha in snapshots:
        mlx_dir(root / "snapshots" / sha)
    for ref, sha in (refs if refs is not None else {"main": COMMIT}).items():
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(sha)  # no newline, as huggingface_hub writes it
    return root


# ----- paths -----


def test_a_gguf_file_is_told_by_its_magic_not_its_name(tmp_path):
    (tmp_path / "model").write_bytes(GGUF_BYTES)
    found = locate("./model")
    assert found == loc.Located(Path("model"), "model", "path") and loc.is_gguf(found.path)


def test_a_text_file_named_gguf_is_refused_once(tmp_path):
    (tmp_path / "x.gguf").write_text("hello world, not weights\n")
    with pytest.raises(ModelNotFound) as exc:
        locate("x.gguf")
    assert str(exc.value) == "x.gguf: not a GGUF file (it starts with 'hello wo')"


@pytest.mark.parametrize(
    "content, said",
    [
        (b"", "it is empty"),
        (b"\x89PNG\r\n\x1a\n", "it starts with bytes 89 50 4e 47 0d 0a 1a 0a"),
        (b"{}", "it starts with '{}'"),
    ],
)
def test_describe_start(tmp_path, content, said):
    (tmp_path / "f").write_bytes(content)
    assert loc.describe_start(tmp_path / "f") == said


def test_a_file_neither_gguf_nor_named_so(tmp_path):
    (tmp_path / "notes").write_text("# notes")
    with pytest.raises(ModelNotFound, match=r"notes: neither an MLX model directory nor a GGUF"):
        locate("notes")


def test_an_mlx_directory_is_itself(tmp_path):
    mlx_dir(tmp_path / "my-model")
    assert locate("my-model") == loc.Located(Path("my-model"), "my-model", "path")


def test_a_missing_path_that_is_no_hub_id(tmp_path):
    with pytest.raises(ModelNotFound, match=r"model not found: a/b/c \(no such file"):
        locate("a/b/c")


# ----- the Hugging Face cache -----


@pytest.mark.parametrize(
    "env, hub",
    [
        ({}, "home/.cache/huggingface/hub"),
        ({"XDG_CACHE_HOME": "xdg"}, "xdg/huggingface/hub"),
        ({"HF_HOME": "hf"}, "hf/hub"),
        ({"HF_HOME": "hf", "HF_HUB_CACHE": "hubcache"}, "hubcache"),
    ],
)
def test_hub_id_from_the_hugging_face_cache(tmp_path, monkeypatch, env, hub):
    for name, value in env.items():
        monkeypatch.setenv(name, str(tmp_path / value))
    root = hf_repo(tmp_path / hub)
    found = locate(REPO)
    assert found == loc.Located(root / "snapshots" / COMMIT, REPO, "huggingface")


def test_refs_main_picks_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    old, new = "1" * 40, "2" * 40
    root = hf_repo(tmp_path / "hf" / "hub", refs={"main": new, "v1": old}, snapshots=(old, new))
    assert locate(REPO).path == root / "snapshots" / new
    assert locate(f"{REPO}@v1").path == root / "snapshots" / old  # a ref name
    assert locate(f"{REPO}@{old}").path == root / "snapshots" / old  # a commit
    with pytest.raises(ModelNotFound, match="has no revision 'v9'"):
        locate(f"{REPO}@v9")


def test_one_snapshot_without_refs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    root = hf_repo(tmp_path / "hf" / "hub", refs={})
    assert locate(REPO).path == root / "snapshots" / COMMIT


def test_a_gguf_repo_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = tmp_path / "hf" / "hub" / "models--org--Model-GGUF" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("# card")
    (snap / "model.Q4_0.gguf").write_bytes(GGUF_BYTES)
    assert locate("org/Model-GGUF") == loc.Located(
        snap / "model.Q4_0.gguf", "org/Model-GGUF", "huggingface"
    )
    (snap / "model.Q8_0.gguf").write_bytes(GGUF_BYTES)
    with pytest.raises(ModelNotFound, match="several GGUF files; name one") as exc:
        locate("org/Model-GGUF")
    assert str(snap / "model.Q8_0.gguf") in str(exc.value)


# ----- LM Studio -----


@pytest.mark.parametrize("base", [".lmstudio/models", ".cache/lm-studio/models"])
def test_hub_id_from_lm_studio(homes, base):
    folder = homes / base / "lmstudio-community" / "Qwen3-GGUF"
    folder.mkdir(parents=True)
    (folder / "Qwen3-Q4_K_M.gguf").write_bytes(GGUF_BYTES)
    found = locate("lmstudio-community/Qwen3-GGUF")
    assert found == loc.Located(
        folder / "Qwen3-Q4_K_M.gguf", "lmstudio-community/Qwen3-GGUF", "lm-studio"
    )


def test_an_mlx_model_in_lm_studio(homes):
    folder = mlx_dir(homes / ".lmstudio" / "models" / REPO)
    assert locate(REPO) == loc.Located(folder, REPO, "lm-studio")


def test_the_hugging_face_cache_comes_first(homes):
    hf = hf_repo(homes / ".cache" / "huggingface" / "hub")
    mlx_dir(homes / ".lmstudio" / "models" / REPO)
    assert locate(REPO).path == hf / "snapshots" / COMMIT


# ----- found nowhere -----


def test_not_found_says_where_it_looked_and_how_to_get_it(homes):
    with pytest.raises(ModelNotFound) as exc:
        locate(REPO)
    said = str(exc.value)
    assert said.startswith(f"model not found: {REPO}\n")
    hub = homes / ".cache" / "huggingface" / "hub"
    for place in (
        f"no file or directory {REPO}",
        f"not in the Hugging Face cache: no {hub / 'models--mlx-community--SmolLM2-135M-Instruct-4bit'}",
        f"not in LM Studio's models: no {homes / '.lmstudio' / 'models' / REPO}",
        f"not in LM Studio's models: no {homes / '.cache' / 'lm-studio' / 'models' / REPO}",
        "mlxd never downloads a model",
        f"mlx_lm.convert --hf-path {REPO}",
        "mlxd path/to/model.gguf",
    ):
        assert place in said


def test_a_snapshot_that_is_not_a_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = tmp_path / "hf" / "hub" / "models--org--Empty" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "README.md").write_text("# card only")
    with pytest.raises(ModelNotFound, match="neither an MLX model directory"):
        locate("org/Empty")


def test_no_model_is_no_working_directory():
    with pytest.raises(ModelNotFound, match="no model given"):
        locate("")
