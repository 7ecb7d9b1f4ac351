"""A stand-in for an mlxd worker, for the front end's tests: stdlib only, so it starts in a blink
where a real worker spends seconds importing mlx. Run as the front end runs a worker:

    python fakeworker.py MODEL --unix-socket PATH --served-model-name ID [settings...]

It serves the routes the front end asks workers for (/health, /v1/queue/stats, /v1/mlx/status,
/stats, /metrics) on mlxd's own HTTP server, GET /v1/responses/{id} for ids that start with its
model's name, and answers any POST: a JSON echo of the request and
of its command line, or (``"stream": true``) ``n`` SSE events ``delay`` seconds apart, then
``[DONE]``. MODEL/fake.json may hold {"fail": MESSAGE} (log it as an error and exit 1 at start)
or {"start_delay": S} (answer /health 503 for S seconds first).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from mlxd.cli import build_parser, cli_values
from mlxd.service import lifecycle
from mlxd.service.sources import resolve
from mlxd.transport import sse
from mlxd.transport.metrics import CONTENT_TYPE
from mlxd.transport.routing import ANY_PATH
from mlxd.transport.server import Server


class Fake:
    def __init__(self, name: str, config: dict, start_delay: float) -> None:
        self.name, self.config = name, config
        self.ready_at = time.monotonic() + start_delay
        self.running = 0


async def health(fake: Fake, ex) -> None:
    ready = time.monotonic() >= fake.ready_at
    await ex.send_json(200 if ready else 503, {"status": "ok" if ready else "loading"})


async def queue_stats(fake: Fake, ex) -> None:
    await ex.send_json(
        200, {"models": {fake.name: {"running_sequences": fake.running, "waiting_requests": 0}}}
    )


async def mlx_status(fake: Fake, ex) -> None:
    queue = {"running_sequences": fake.running, "waiting_requests": 0}
    await ex.send_json(
        200, {"model": {"id": fake.name}, "memory": {"active_bytes": 1}, "queue": queue}
    )


async def stats(fake: Fake, ex) -> None:
    await ex.send_json(200, {"requests_total": 0, "running_sequences": fake.running})


async def metrics(fake: Fake, ex) -> None:
    text = "# HELP mlxd_ready Ready.\n# TYPE mlxd_ready gauge\nmlxd_ready 1\n"
    await ex.send(200, text.encode(), CONTENT_TYPE)


async def answer(fake: Fake, ex) -> None:
    body = json.loads(ex.request.body or b"{}")
    if not body.get("stream"):
        await ex.send_json(
            200,
            {"model": fake.name, "path": ex.request.head.path, "config": fake.config, "body": body},
        )
        return
    fake.running += 1
    try:
        await ex.start_stream(sse.CONTENT_TYPE)
        for i in range(int(body.get("n", 5))):
            await ex.send_chunk(sse.event({"model": fake.name, "i": i}))
            await asyncio.sleep(float(body.get("delay", 0.0)))
        await ex.send_chunk(sse.DONE)
        await ex.end_stream()
    finally:
        fake.running -= 1


async def stored(fake: Fake, ex) -> None:
    """A stored response: this worker holds the ids that start with its model's name."""
    if not ex.path_param.startswith(fake.name):
        await ex.send_json(404, {"error": {"message": "no such response"}})
        return
    await ex.send_json(200, {"id": ex.path_param, "model": fake.name})


ROUTES = {
    ("GET", "/v1/responses/"): stored,
    ("GET", "/health"): health,
    ("GET", "/v1/queue/stats"): queue_stats,
    ("GET", "/v1/mlx/status"): mlx_status,
    ("GET", "/stats"): stats,
    ("GET", "/metrics"): metrics,
    ("POST", ANY_PATH): answer,
}


async def serve(socket: str, fake: Fake) -> None:
    server = Server(fake, ROUTES)
    await server.start_unix(socket)
    stop = asyncio.Event()
    lifecycle.install_signal_handlers(stop, None)
    watch = asyncio.create_task(lifecycle.stop_when_orphaned(stop))
    await stop.wait()
    watch.cancel()
    await server.shutdown(0)  # what runs is cut short with a last error event, as in mlxd


def main(argv: list[str]) -> int:
    model = Path(argv[0])
    behaviour = (
        json.loads((model / "fake.json").read_text()) if (model / "fake.json").exists() else {}
    )
    if behaviour.get("fail"):
        print(
            json.dumps({"level": "error", "logger": "mlxd", "message": behaviour["fail"]}),
            flush=True,
        )
        return 1
    # The command line parses as a real worker's would: the front end's flags must.
    config = resolve(cli_values(build_parser().parse_args(argv)), {})
    fake = Fake(config.served_model_name, config.to_json(), float(behaviour.get("start_delay", 0)))
    asyncio.run(serve(config.unix_socket, fake))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
