"""A tiny model that says what the test tells it to: the forward pass runs as usual (the KV
cache fills, the batch machinery works), then the logits are replaced so that greedy decoding
writes the script's tokens and then the end of sequence.

Good for one request at a time with the prompt cache off: a forward pass over more than one
token is a prefill, and the script starts over after it.

Each scripted server wraps its own model through run_async()'s engine factory seam
(``ServerThread(model_wrapper=...)``), so scripted and ordinary servers run side by side.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import mlx.core as mx

from helpers import ServerThread
from tinymodel import build_tiny_model


class Scripted:
    def __init__(self, model_dir: Path) -> None:
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        self.tokenizer = load_tokenizer(Path(model_dir))
        self.eos = self.tokenizer.eos_token_id
        self.script: list[int] = []
        self._pos = 0
        self.server: ServerThread | None = None

    def say(self, text: str) -> None:
        self.script = self.tokenizer.encode(text, add_special_tokens=False)

    def wrap(self, model):
        return _ScriptedModel(model, self)

    @property
    def url(self) -> str:
        return self.server.url

    def next_token(self, prefill: bool) -> int | None:
        if prefill:
            self._pos = 0
            return None
        token = self.script[self._pos] if self._pos < len(self.script) else self.eos
        self._pos += 1
        return token


class _ScriptedModel:
    def __init__(self, model, script: Scripted) -> None:
        self._model, self._script = model, script

    def __call__(self, inputs, *args, **kwargs):
        logits = self._model(inputs, *args, **kwargs)
        token = self._script.next_token(prefill=inputs.shape[1] > 1)
        if token is None:
            return logits
        hot = mx.arange(logits.shape[-1]) == token
        return mx.broadcast_to(mx.where(hot, 30.0, -30.0).astype(logits.dtype), logits.shape)

    def __getattr__(self, name):
        return getattr(self._model, name)


@contextlib.contextmanager
def scripted_server(tmp_path_factory, template: str, model: dict | None = None, **config):
    """``model``: overrides of the tiny model's config (a longer context, say)."""
    from mlxd.service.config import Config

    model_dir = build_tiny_model(
        tmp_path_factory.mktemp(template) / f"tiny-{template}", template=template, **(model or {})
    )
    script = Scripted(model_dir)
    script.server = ServerThread(
        Config(model=str(model_dir), port=0, max_tokens=64, prompt_cache_bytes=0, **config),
        model_wrapper=script.wrap,
    )
    try:
        script.server.start()
        yield script
    finally:
        script.server.close()
