"""The asyncio shell on a real socket, with a model-free route table: keep-alive, pipelining,
100-continue, timeouts, the connection cap, backpressure, headers."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from mlxd.transport import sse
from mlxd.transport.server import Server, ServerSettings


async def echo(_app, ex):
    await ex.send_json(200, {"path": ex.request.head.path, "body": ex.request.body.decode()})


async def firehose(_app, ex):
    """Streams 64 MiB: far more than any socket buffer, so a client that doesn't read blocks it."""
    await ex.start_stream(sse.CONTENT_TYPE)
    block = sse.event({"x": "y" * 60000})
    for _ in range(1100):
        await ex.send_chunk(block)
    await ex.end_stream()


ROUTES = {("GET", "/echo"): echo, ("POST", "/echo"): echo, ("GET", "/firehose"): firehose}
FAST = ServerSettings(
    max_body_bytes=1024,
    max_connections=8,
    keep_alive_timeout=0.5,
    head_timeout=0.5,
    body_timeout=0.5,
    send_timeout=5.0,
)


class Running:
    def __init__(self, settings: ServerSettings) -> None:
        self.server = Server(None, ROUTES, settings)
        self.clients: list[Client] = []  # closed with the server
        self.ready = threading.Event()
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _main(self):
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        [(_, self.port)] = await self.server.start("127.0.0.1", 0)
        self.ready.set()
        await self.stop.wait()
        await self.server.shutdown(1)

    def connect(self) -> Client:
        client = Client(socket.create_connection(("127.0.0.1", self.port), timeout=10))
        self.clients.append(client)
        return client

    def close(self):
        for client in self.clients:
            client.close()
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def srv():
    running = Running(FAST)
    yield running
    running.close()


class Client:
    """A socket with a read buffer, so pipelined responses can be split."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, n: int) -> bytes:
        if self.buf:
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        return self.sock.recv(n)

    def setsockopt(self, *args) -> None:
        self.sock.setsockopt(*args)

    def close(self) -> None:
        self.sock.close()


def read_response(client: Client) -> tuple[int, dict, bytes]:
    """One Content-Length response (enough for these tests)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        rest += client.recv(65536)
    client.buf = rest[length:] + client.buf
    return status, headers, rest[:length]


def closed(client: Client, timeout: float = 3.0) -> bool:
    client.sock.settimeout(timeout)
    try:
        return client.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


GET = b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"


def test_keep_alive_and_headers(srv):
    sock = srv.connect()
    for _ in range(3):
        sock.sendall(GET)
        status, headers, body = read_response(sock)
        assert status == 200 and json.loads(body)["path"] == "/echo"
        assert headers["content-type"] == "application/json; charset=utf-8"
        assert headers["server"].startswith("mlxd/") and headers["date"].endswith("GMT")
        assert len(headers["x-request-id"]) == 32
    sock.sendall(
        b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: abc-1\r\n\r\n"
    )
    status, headers, _ = read_response(sock)
    assert headers["connection"] == "close" and headers["x-request-id"] == "abc-1"
    assert closed(sock)


def test_http10_closes_by_default(srv):
    sock = srv.connect()
    sock.sendall(b"GET /echo HTTP/1.0\r\n\r\n")
    assert read_response(sock)[0] == 200
    assert closed(sock)


def test_pipelined_requests_answered_in_order(srv):
    sock = srv.connect()
    bodies = [b"one", b"two", b"three"]
    sock.sendall(
        b"".join(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
            for b in bodies
        )
    )
    got = [json.loads(read_response(sock)[2])["body"] for _ in bodies]
    assert got == ["one", "two", "three"]


def test_expect_100_continue(srv):
    sock = srv.connect()
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"hello")
    status, _h, body = read_response(sock)
    assert status == 200 and json.loads(body)["body"] == "hello"


def test_expect_100_refused_without_reading_body(srv):
    sock = srv.connect()
    sock.sendall(
        b"POST /nowhere HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, body = read_response(sock)
    assert status == 404 and json.loads(body)["error"]["type"]
    assert closed(sock)


def test_other_expectation_is_417(srv):
    sock = srv.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: magic\r\n\r\nx")
    assert read_response(sock)[0] == 417


def test_framing_error_answers_then_closes(srv):
    sock = srv.connect()
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, headers, body = read_response(sock)
    assert status == 400 and set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert closed(sock)


def test_body_over_limit_is_413_before_the_body(srv):
    sock = srv.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 999999\r\n\r\n")
    assert read_response(sock)[0] == 413


def test_wrong_content_type_is_415(srv):
    sock = srv.connect()
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    status, _h, body = read_response(sock)
    assert status == 415 and json.loads(body)["error"]["code"] == "unsupported_media_type"
    sock.sendall(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json; charset=UTF-8\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    )
    assert read_response(sock)[0] == 200


def test_head_and_405_with_allow(srv):
    sock = srv.connect()
    sock.sendall(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")  # no body
    assert b"Content-Length: " in data
    sock.sendall(b"DELETE /echo HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = read_response(sock)
    assert status == 405 and headers["allow"] == "GET, HEAD, POST"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_slowloris_head_times_out(srv):
    sock = srv.connect()
    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    for _ in range(10):  # trickle a header line every 0.1 s: the deadline still holds
        time.sleep(0.1)
        try:
            sock.sendall(b"X-A: b\r\n")
        except OSError:
            break
    status, _h, _b = read_response(sock)
    assert status == 408 and time.monotonic() - started < 3
    assert closed(sock)


def test_idle_keep_alive_connection_is_closed(srv):
    sock = srv.connect()
    sock.sendall(GET)
    read_response(sock)
    started = time.monotonic()
    assert closed(sock, timeout=5)
    assert time.monotonic() - started < 3


def test_connection_cap_answers_503():
    running = Running(ServerSettings(max_connections=3, keep_alive_timeout=5))
    try:
        held = [running.connect() for _ in range(3)]
        time.sleep(0.2)
        extra = running.connect()
        status, headers, body = read_response(extra)
        assert status == 503 and headers.get("retry-after")
        held[0].close()
        time.sleep(0.2)
        again = running.connect()
        again.sendall(GET)
        assert read_response(again)[0] == 200
    finally:
        running.close()


def test_slow_reader_does_not_stall_others(srv):
    hog = srv.connect()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.sendall(b"GET /firehose HTTP/1.1\r\nHost: t\r\n\r\n")  # ... and never read
    time.sleep(0.3)
    started = time.monotonic()
    other = srv.connect()
    other.sendall(GET)
    assert read_response(other)[0] == 200
    assert time.monotonic() - started < 10  # the hog never reads: a stall would be forever


def test_many_idle_connections_while_a_request_completes():
    running = Running(ServerSettings(max_connections=1024, keep_alive_timeout=30, head_timeout=30))
    try:
        for i in range(300):  # running.close() closes them
            sock = running.connect()
            if i % 2:
                sock.sendall(b"GET /echo HTTP/1.1\r\nHost:")  # half a head, then silence
        started = time.monotonic()
        sock = running.connect()
        sock.sendall(GET)
        assert read_response(sock)[0] == 200
        assert time.monotonic() - started < 10  # not after the idle ones' 30 s timeouts
        assert len(running.server.connections) >= 300
    finally:
        running.close()
