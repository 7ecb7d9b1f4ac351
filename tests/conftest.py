"""Shared fixtures: tiny models built on the spot, and mlxd servers on port 0."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Weight-routing calibrations are kept under $XDG_CACHE_HOME/mlxd: one cache for the whole
# session (servers started in subprocesses inherit it), never the user's own.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="mlxd-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

from helpers import SMOLLM, ServerThread, close_clients  # noqa: E402
from tinymodel import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _sdk_clients_closed():
    """Closes the SDK clients a module's tests made (helpers.sdk, helpers.messages_client)."""
    yield
    close_clients()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def smollm_path() -> Path:
    if not SMOLLM.exists():
        pytest.skip("SmolLM2 GGUF not downloaded (make model)")
    return SMOLLM


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    from mlxd.service.config import Config

    srv = ServerThread(Config(model=str(tiny_model_dir), port=0, max_tokens=32)).start()
    yield srv
    srv.close()
