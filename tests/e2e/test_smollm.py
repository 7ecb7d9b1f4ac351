"""The real model, through the real command line: `python -m mlxd models/SmolLM2...gguf --port 0`.

Few and short on purpose: SmolLM2-135M decodes a few tokens a second on a 2-core CPU.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from helpers import ROOT, get_json, messages_client, sdk

pytestmark = pytest.mark.smollm


@pytest.fixture(scope="module")
def smollm_server(smollm_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxd", str(smollm_path), "--port", "0"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url, log = None, []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log.append(line)
            if m := re.search(r"listening on (http://\S+)", line):
                url = m.group(1)
            if " ready: " in line:
                break
        assert url and get_json(url + "/health")[0] == 200, "".join(log)
        yield proc, url
    finally:  # a server that never got ready is stopped too, and its pipe closed
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


def test_smollm_knows_paris(smollm_server):
    _, url = smollm_server
    client = sdk(url)
    reply = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        temperature=0,
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.usage.completion_tokens <= 20


def test_smollm_knows_paris_through_responses(smollm_server):
    _, url = smollm_server
    reply = sdk(url).responses.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        input="What is the capital of France?",
        max_output_tokens=20,
        temperature=0,
    )
    assert "Paris" in reply.output_text and reply.usage.output_tokens <= 20


def test_smollm_knows_paris_through_messages(smollm_server):
    """Anthropic's Messages API on the same model: same answer."""
    _, url = smollm_server
    reply = messages_client(url).messages.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=20,
        extra_body={"temperature": 0},
    )
    assert "Paris" in "".join(b.text for b in reply.content)
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.usage.output_tokens <= 20


def test_smollm_streams_then_stops_on_sigterm(smollm_server):
    proc, url = smollm_server
    client = sdk(url)
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct.Q4_1",
        messages=[{"role": "user", "content": "Say hello in French."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
