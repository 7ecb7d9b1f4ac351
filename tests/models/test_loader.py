"""loader.py: what MODEL is comes from its content (a GGUF file by its magic bytes, whatever its
name), and a problem with it is said once."""

from __future__ import annotations

import pytest

from mlxd.models import loader
from mlxd.models.gguf import UnsupportedModelError

GGUF_START = b"GGUF\x03\x00\x00\x00"


@pytest.fixture
def gguf_said(monkeypatch):
    """The GGUF reader stubbed to refuse with a given message (what it was handed, kept)."""
    handed = []

    def refuse(message):
        def open_gguf(path):
            handed.append((path.name, path.resolve()))
            raise UnsupportedModelError(message.format(name=path.name))

        monkeypatch.setattr(loader.gguf, "open_gguf", open_gguf)
        return handed

    return refuse


def test_a_gguf_file_named_model_goes_to_the_gguf_reader(tmp_path, gguf_said):
    handed = gguf_said("unsupported architecture 'mamba'")
    (tmp_path / "model").write_bytes(GGUF_START)
    with pytest.raises(loader.ModelLoadError) as exc:
        loader.load(tmp_path / "model")
    assert handed == [("model.gguf", tmp_path / "model")]  # through a .gguf-named link
    assert str(exc.value) == "model: unsupported architecture 'mamba'"


def test_a_message_that_names_the_file_is_not_prefixed_again(tmp_path, gguf_said):
    gguf_said("{name}: GGUF header cut short at byte 8")
    (tmp_path / "m.gguf").write_bytes(GGUF_START)
    with pytest.raises(loader.ModelLoadError) as exc:
        loader.load(tmp_path / "m.gguf")
    assert str(exc.value) == "m.gguf: GGUF header cut short at byte 8"


def test_a_text_file_named_gguf(tmp_path, gguf_said):
    handed = gguf_said("never")
    (tmp_path / "x.gguf").write_text("hello world")
    with pytest.raises(loader.ModelLoadError) as exc:
        loader.load(tmp_path / "x.gguf")
    assert (
        handed == []
        and str(exc.value) == f"{tmp_path / 'x.gguf'}: not a GGUF file (it starts with 'hello wo')"
    )


@pytest.mark.smollm
def test_smollm_under_another_name(smollm_path, tmp_path):
    (tmp_path / "model").symlink_to(smollm_path)
    loaded = loader.load(tmp_path / "model")
    assert (loaded.format, loaded.name) == ("gguf", "model")
