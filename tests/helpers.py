"""Test helpers several modules use: servers on port 0, the SDK clients, a slow model, JSON GETs,
Anthropic event streams read raw."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


# Every SDK client a test makes, closed by conftest's module teardown: a client left to the
# garbage collector drops its pooled socket unclosed, and the ResourceWarning lands on whatever
# test happens to be running then.
CLIENTS: list = []


def keep(client):
    CLIENTS.append(client)
    return client


def close_clients() -> None:
    while CLIENTS:
        CLIENTS.pop().close()


def sdk(url: str):
    """The OpenAI SDK pointed at an mlxd base URL (no key checked, no retries hiding errors)."""
    import openai

    return keep(openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0))


def messages_client(url: str, api_key: str = "unused", **kwargs):
    """The anthropic SDK pointed at an mlxd server (no retries hiding errors)."""
    import anthropic

    return keep(anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0, **kwargs))


def raw_stream(url: str, path: str, body: dict, headers: dict | None = None):
    """(status, [(event name, data)]) of one server-sent event stream, read to the end; (status,
    the JSON body) when the answer is not a stream."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", path, json.dumps(body), headers or {"Content-Type": "application/json"})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    if not resp.getheader("content-type", "").startswith("text/event-stream"):
        return resp.status, json.loads(text)
    events = []
    for chunk in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.split("\n") if line)
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return resp.status, events


def check_message_stream(events) -> None:
    """Anthropic's grammar: message_start, blocks (start, deltas, stop, in index order),
    message_delta, message_stop; pings anywhere; each event's data names its own type."""
    names = [n for n, _ in events if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index, next_index = None, 0
    for name, data in events:
        assert data["type"] == name
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index, next_index = data["index"], next_index + 1
        elif name in ("content_block_delta", "content_block_stop"):
            assert data["index"] == open_index
            open_index = None if name == "content_block_stop" else open_index
    assert open_index is None


class SlowModel:
    """Wraps a model so each forward pass takes at least ``delay`` seconds: lets tests hold a
    generation open long enough to observe queueing, cancellation and concurrency."""

    def __init__(self, model, delay: float) -> None:
        self._model, self._delay = model, delay

    def __call__(self, *args, **kwargs):
        time.sleep(self._delay)
        return self._model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


class ServerThread:
    """An mlxd server on 127.0.0.1:0 in a background thread with its own event loop.

    ``model_wrapper`` wraps the loaded model (e.g. ``SlowModel``); ``engine_kwargs`` go to the
    Engine (e.g. ``probe=`` to inject failures): both through run_async()'s engine factory seam."""

    def __init__(self, config, *, model_wrapper=None, engine_kwargs=None) -> None:
        self.config = config
        self.model_wrapper = model_wrapper
        self.engine_kwargs = engine_kwargs or {}
        self.port: int | None = None
        self.code: int | None = None
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.run(self._run())

    def _engine(self, model, tokenizer, **kw):
        from mlxd.engine.loop import Engine

        if self.model_wrapper is not None:
            model = self.model_wrapper(model)
        return Engine(model, tokenizer, **kw, **self.engine_kwargs)

    async def _run(self) -> None:
        from mlxd.service.run import run_async

        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        try:
            self.code = await run_async(
                self.config,
                on_listening=self._on_listening,
                stop=self.stop,
                engine_factory=self._engine,
            )
        finally:
            self._listening.set()

    def _on_listening(self, addresses) -> None:
        self.port = addresses[0][1]
        self._listening.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ServerThread:
        self._thread.start()
        assert self._listening.wait(timeout), "server did not start listening"
        assert self.port is not None, f"server exited with {self.code}"
        if wait_ready:
            deadline = time.monotonic() + timeout
            while get_json(self.url + "/health")[0] != 200:
                assert time.monotonic() < deadline, "server never became ready"
                assert self._thread.is_alive(), f"server exited with {self.code}"
                time.sleep(0.05)
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop.set)
            self._thread.join(30)


def get_json(url: str, body: dict | None = None, timeout: float = 30):
    """(status, parsed JSON) for a GET, or a POST when ``body`` is given."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except (urllib.error.URLError, ConnectionError, TimeoutError):  # no answer at all
        return None, None


class Fault:
    """Raises at the armed probe points, ``times`` times each (the test seam Engine offers)."""

    def __init__(self) -> None:
        self.armed: dict[str, int] = {}
        self.hits: list[str] = []
        self.lock = threading.Lock()

    def arm(self, *points: str, times: int = 1) -> None:
        from mlxd.engine.loop import PROBE_POINTS

        assert set(points) <= set(PROBE_POINTS)
        with self.lock:
            self.armed.update(dict.fromkeys(points, times))

    def __call__(self, point: str) -> None:
        with self.lock:
            if self.armed.get(point, 0) > 0:
                self.armed[point] -= 1
                self.hits.append(point)
                raise RuntimeError(f"injected at {point}")


def run_job(engine, prompt, **params) -> list:
    """Submit one job to an engine and wait for its events, the last one not a Delta."""
    import queue

    from mlxd.engine.loop import Delta, Job, SamplingParams

    events: queue.Queue = queue.Queue()
    job = Job(prompt, SamplingParams(**params), events.put)
    engine.submit(job)
    out = []
    while True:
        ev = events.get(timeout=30)
        out.append(ev)
        if not isinstance(ev, Delta):
            return out


def text_of(events) -> str:
    from mlxd.engine.loop import Delta

    return "".join(e.text for e in events if isinstance(e, Delta))
