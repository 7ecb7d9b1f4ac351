"""Prefix routes: the longest prefix wins, ANY_PATH catches the rest; admin keys; joined
metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from mlxd.transport import metrics, routing
from mlxd.transport.h1_head import Head
from mlxd.transport.server import Server, ServerSettings


async def models(_app, _ex) -> None: ...
async def one(_app, _ex) -> None: ...
async def rest(_app, _ex) -> None: ...


ROUTES = {
    ("GET", "/v1/models"): models,
    ("GET", "/v1/models/"): one,
    ("POST", routing.ANY_PATH): rest,
    ("GET", routing.ANY_PATH): rest,
}


def test_the_longest_prefix_wins():
    assert routing.route(ROUTES, "GET", "/v1/models").handler is models
    found = routing.route(ROUTES, "GET", "/v1/models/a/b")
    assert (found.handler, found.param, found.label) == (one, "a/b", "/v1/models/{id}")
    assert routing.route(ROUTES, "POST", "/v1/models/a").error.status == 405
    found = routing.route(ROUTES, "POST", "/v1/messages")
    assert (found.handler, found.param, found.label) == (rest, "", "other")
    assert routing.route(ROUTES, "GET", "/").handler is rest


def _head(path: str, key: str | None) -> Head:
    headers = (("authorization", f"Bearer {key}"),) if key else ()
    return Head("GET", path, path, "", "HTTP/1.1", headers, True, False)


def test_admin_routes_take_their_own_keys():
    server = Server(None, ROUTES, ServerSettings(api_keys=("k",), admin_keys=("a",)))
    assert server._auth_error(_head("/v1/models", "k")) is None
    assert server._auth_error(_head("/admin/status", "k")).status == 401
    assert server._auth_error(_head("/admin/status", "a")) is None
    plain = Server(None, ROUTES, ServerSettings(api_keys=("k",)))
    assert plain._auth_error(_head("/admin/status", "k")) is None


def test_merge_labels_each_part_and_keeps_one_family_each():
    own = metrics.Metrics()
    own.observe_request("GET", "/health", 200, 0.01, None)
    worker = metrics.Metrics()
    worker.observe_generation(3, 5, 0, 0.1, 0.5)
    text = metrics.merge(
        [(None, own.exposition({})), ("a", worker.exposition({"mlxd_ready": ("r", 1)}))]
    )
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.labels for s in families["mlxd_requests"].samples] == [
        {"method": "GET", "route": "/health", "status": "200"}
    ]
    tokens = {s.labels.get("model"): s.value for s in families["mlxd_completion_tokens"].samples}
    assert tokens == {None: 0, "a": 5}
    assert metrics.with_label('m{x="a b"} 1', "model", 'q"') == 'm{model="q\\"",x="a b"} 1'
