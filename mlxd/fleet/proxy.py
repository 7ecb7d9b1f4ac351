"""One request through the front end to a worker and its response back, as it comes.

A streamed response goes through chunk by chunk (one chunk is one SSE event; none is held back);
a whole one goes through with its status and end-to-end fields. A client that goes away cancels
this handler, which closes the worker connection, which cancels the worker's job. A worker that
dies mid-response leaves its client a clean end: a last error event in the API's own streaming
shape (and ``[DONE]`` for OpenAI's), or a 502 in its error shape when nothing was sent yet.
"""

from __future__ import annotations

import asyncio

from mlxd.fleet import upstream
from mlxd.fleet.workers import Worker
from mlxd.transport import sse
from mlxd.transport.errors import SERVER_ERROR, HttpError
from mlxd.transport.exchange import Exchange

DROPPED_REQUEST_FIELDS = frozenset({"authorization"})  # checked here; a worker has no keys
DROPPED_RESPONSE_FIELDS = frozenset({"date", "server", "content-type"})  # the Exchange's own


def _responses_end(err: HttpError) -> bytes:
    """The Responses API's ``error`` event (as api/responses/generate.py sends one; the
    ``response.failed`` that follows there needs the response, which only the worker had)."""
    body = {"type": "error", "code": err.code, "message": err.message, "param": err.param}
    return sse.named_event("error", body)


# The last event of a stream the worker could not finish, where the route's error style (OpenAI's
# error event and [DONE], Anthropic's error event: Exchange.errors) is not the API's own.
STREAM_ENDS = {"/v1/responses": _responses_end}


async def forward(ex: Exchange, worker: Worker, *, unless_404: bool = False) -> bool:
    """Answer ``ex`` with the worker's response; True once answered. ``unless_404``: a 404 is
    not passed on (False: ask another worker)."""
    head = ex.request.head
    # HEAD goes on as GET: a HEAD response's Content-Length announces a body that never comes.
    method = "GET" if head.method == "HEAD" else head.method
    fields = [(n, v) for n, v in head.headers if n not in DROPPED_REQUEST_FIELDS]
    try:
        resp = await upstream.request(
            worker.socket, method, head.target, fields, ex.request.body, ex.request_id
        )
    except upstream.UpstreamError as exc:
        raise await _worker_failed(worker, exc) from None
    if unless_404 and resp.status == 404:
        resp.close()
        return False
    try:
        ex.route = head.path if resp.status != 404 else "other"  # a metrics label
        if resp.status == 200 and resp.chunked:
            await _relay_stream(ex, resp, worker)
        else:
            try:
                body = await resp.body()
            except upstream.UpstreamError as exc:
                raise await _worker_failed(worker, exc) from None
            headers = [
                (n, v)
                for n, v in upstream.forwardable(resp.headers)
                if n not in DROPPED_RESPONSE_FIELDS
            ]
            await ex.send(resp.status, body, resp.header("content-type"), headers)
    finally:
        resp.close()  # also when our client left: the worker sees it and cancels the job
    return True


async def _relay_stream(ex: Exchange, resp: upstream.Response, worker: Worker) -> None:
    await ex.start_stream(resp.header("content-type") or sse.CONTENT_TYPE)
    finished = False
    try:
        async for piece in resp.pieces():
            await ex.send_chunk(piece)
            finished = piece == sse.DONE
    except upstream.UpstreamError as exc:
        if not finished:
            err = await _worker_failed(worker, exc)
            ex.note_error(err)
            end = STREAM_ENDS.get(ex.request.head.path, ex.errors.stream_end)
            await ex.send_chunk(end(err))
    await ex.end_stream()


async def _worker_failed(worker: Worker, exc: Exception) -> HttpError:
    """The 502 that says what became of the worker (it may take a moment to be seen exiting)."""
    reason = await worker.exit_reason()
    message = (
        f"the worker serving {worker.id!r} {reason}"
        if reason
        else f"the connection to the worker serving {worker.id!r} broke ({exc})"
    )
    return HttpError(502, SERVER_ERROR, message, code="worker_failed")


async def ask(worker: Worker, target: str, timeout: float) -> object | None:
    """A ready worker's JSON answer to a GET (status, stats), or None."""
    if worker.state != "ready":
        return None
    answer = await upstream.get_json(worker.socket, target, timeout)
    return answer[1] if answer is not None and answer[0] == 200 else None


async def ask_all(workers: list[Worker], target: str, timeout: float) -> list[object | None]:
    return list(await asyncio.gather(*(ask(w, target, timeout) for w in workers)))
