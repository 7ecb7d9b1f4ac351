#!/usr/bin/env bash
# make test-dist: the frozen mlxd (make dist) as a user gets it.
#
# 1. The release: SHA256SUMS verifies, the tarball holds what INSTALL.md promises, the copy
#    unpacked from it runs from a symlink elsewhere on disk (as brew and a tarball install do), and
#    the binary holds every module that mlx-lm and transformers import by a name built at run time.
# 2. The instant commands: --version, --help, --print-config on the example config, and --stop
#    and --status with nothing running (exit 3), all without loading mlx.
# 3. Serving, on the tiny test model (started with --daemon), a tiny qwen3 (another mlx-lm
#    architecture and tokenizer class, both imported by name) and SmolLM2 (in the foreground):
#    /health turns 200, a chat request answers (Paris, on SmolLM2), /docs and a Responses
#    request answer (the tiny model), the chat answer is the very one the
#    venv's mlxd gives, the PID file is there, and `dist/mlxd --stop --port N` stops the server,
#    which exits 0 and leaves no PID file behind.
# 4. Several models: `dist/mlxd --models DIR` with the tiny and the qwen3 model; each model's
#    worker is the binary itself (no Python, no -m), answers as the single-model runs did,
#    --status lists both, and --stop stops the front end and its workers.
#
# HOME and XDG_RUNTIME_DIR point into a temporary directory, so PID and log files land there
# and nothing of the user's is touched. Every server started here is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
VENV_MLXD=${VENV_MLXD:-$ROOT/.venv/bin/mlxd}
BIN=$ROOT/dist/mlxd
SMOLLM=${SMOLLM:-$ROOT/models/SmolLM2-135M-Instruct.Q4_1.gguf}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlxd-test-dist.XXXXXX")
PIDS=()
cleanup() {
    local code=$?
    # ${A[@]+...}: bash 3.2 (macOS) calls an empty array unbound under set -u.
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    # A --daemon server is not our child: find it by its PID files.
    for f in "$WORK"/run/mlxd-*.pid "$WORK"/home/.mlxd/mlxd-*.pid; do
        if [ -f "$f" ]; then kill -KILL "$(head -n1 "$f")" 2>/dev/null || true; fi
    done
    if [ "$code" -ne 0 ]; then
        echo "test-dist: FAILED (exit $code); server logs:" >&2
        for log in "$WORK"/*.log "$WORK"/home/.mlxd/*.log; do
            [ -f "$log" ] && { echo "--- $log" >&2; tail -n 40 "$log" >&2; }
        done
    fi
    rm -rf "$WORK"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/home" "$WORK/run"
chmod 700 "$WORK/run"
export HOME=$WORK/home XDG_RUNTIME_DIR=$WORK/run
unset MLXD_CONFIG MLXD_PORT MLXD_PID_FILE MLXD_LOG_FILE MLXD_MODEL

fail() { echo "test-dist: $*" >&2; exit 1; }
step() { echo "test-dist: $*"; }

[ -x "$BIN" ] || fail "$BIN missing: run make dist"
[ -f "$SMOLLM" ] || fail "$SMOLLM missing: run make model"
VERSION=$("$PY" -c 'import mlxd; print(mlxd.__version__)')

# ----- 1. the release -----
step "SHA256SUMS and tarball contents"
(cd dist && "$PY" - <<'EOF'
import hashlib, pathlib, sys
lines = pathlib.Path("SHA256SUMS").read_text().splitlines()
assert lines, "SHA256SUMS is empty"
for line in lines:
    digest, name = line.split("  ", 1)
    actual = hashlib.sha256(pathlib.Path(name).read_bytes()).hexdigest()
    assert actual == digest, f"{name}: sha256 {actual} != {digest}"
    print(f"  {name}: OK")
EOF
)
TARBALLS=(dist/mlxd-"$VERSION"-*.tar.gz)
if [ ${#TARBALLS[@]} -ne 1 ] || [ ! -f "${TARBALLS[0]}" ]; then
    fail "expected one dist/mlxd-$VERSION-*.tar.gz"
fi
NAME=$(basename "${TARBALLS[0]}" .tar.gz)
mkdir -p "$WORK/unpacked" "$WORK/bin"
tar -xzf "${TARBALLS[0]}" -C "$WORK/unpacked"
for member in mlxd lib README.md LICENSE mlxd.example.json; do
    [ -e "$WORK/unpacked/$NAME/$member" ] || fail "tarball lacks $NAME/$member"
done
ln -s "$WORK/unpacked/$NAME/mlxd" "$WORK/bin/mlxd"
got=$("$WORK/bin/mlxd" --version)
[ "$got" = "mlxd $VERSION" ] || fail "unpacked mlxd --version said '$got'"
echo "  $NAME:" "$(cd "$WORK/unpacked/$NAME" && echo *)"

step "every module mlx_lm and transformers import by name is in the binary"
"$ROOT/.venv/bin/pyi-archive_viewer" --list --recursive --brief "$BIN" > "$WORK/archive.txt"
"$PY" - "$WORK/archive.txt" <<'EOF'
import importlib.util, pathlib, sys
have = {line.strip() for line in open(sys.argv[1])}
root = lambda name: pathlib.Path(importlib.util.find_spec(name).submodule_search_locations[0])
want = set()
for pkg in ("models", "chat_templates", "tool_parsers"):      # importlib.import_module(f"mlx_lm.{pkg}.{x}")
    want |= {f"mlx_lm.{pkg}.{f.stem}".removesuffix(".__init__") for f in (root("mlx_lm") / pkg).glob("*.py")}
for kind in ("tokenization", "configuration"):                # AutoTokenizer, AutoConfig
    want |= {f"transformers.models.{f.parent.name}.{f.stem}"
             for f in (root("transformers") / "models").glob(f"*/{kind}_*.py")}
missing = sorted(want - have)
assert not missing, f"{len(missing)} modules missing from the binary, e.g. {missing[:8]}"
print(f"  all {len(want)} there")
EOF

# ----- 2. the instant commands -----
step "--version, --help, --print-config, --stop and --status with nothing running"
[ "$("$BIN" --version)" = "mlxd $VERSION" ] || fail "--version"
"$BIN" --help | grep -q -- "--stop" || fail "--help does not mention --stop"
"$BIN" --config "$WORK/unpacked/$NAME/mlxd.example.json" --print-config > "$WORK/example-config.json" \
    || fail "the example config does not load"
expect_exit() {   # expect_exit CODE CMD...: run CMD, fail unless it exits CODE
    local want=$1 code=0
    shift
    "$@" > "$WORK/out.txt" 2>&1 || code=$?
    [ "$code" -eq "$want" ] || { cat "$WORK/out.txt" >&2; fail "$* exited $code, expected $want"; }
}
expect_exit 3 "$BIN" --stop --port 8799
expect_exit 3 "$BIN" --status --port 8799

# ----- 3. serving -----
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pid_file_for() { "$BIN" --port "$1" --print-config | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["pid_file"])'; }

# wait_ready PORT [PID]: /health 200 within READY_TIMEOUT_S; fail at once if PID dies.
wait_ready() {
    local port=$1 pid=${2:-} deadline=$((SECONDS + READY_TIMEOUT_S))
    until "$PY" - "$port" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    do
        [ -z "$pid" ] || kill -0 "$pid" 2>/dev/null || fail "server on port $port exited before it was ready"
        [ $SECONDS -lt $deadline ] || fail "server on port $port not ready in ${READY_TIMEOUT_S}s"
        sleep 0.2
    done
}

# chat PORT OUT [MODEL]: the issue's request; the whole response JSON goes to OUT.
chat() {
    "$PY" - "$1" "$2" "${3:-}" <<'EOF'
import json, sys, urllib.request
body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 20, "temperature": 0}
if sys.argv[3]:
    body["model"] = sys.argv[3]
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions",
                             data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    reply = json.load(r)
assert reply["object"] == "chat.completion", reply
assert isinstance(reply["choices"][0]["message"]["content"], str), reply
json.dump(reply, open(sys.argv[2], "w"))
EOF
}

# stream PORT: a streamed completion ends with [DONE] after at least one delta.
stream() {
    "$PY" - "$1" <<'EOF'
import json, sys, urllib.request
body = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "stream": True}
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/completions",
                             data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    events = [line[6:] for line in r.read().decode().splitlines() if line.startswith("data: ")]
assert events and events[-1] == "[DONE]", events
assert any(json.loads(e)["choices"] for e in events[:-1]), events
EOF
}

# docs_and_responses PORT: /docs comes from the binary's package data, /openapi.json lists the
# Responses routes, and a response is created and stored.
docs_and_responses() {
    "$PY" - "$1" <<'EOF'
import json, sys, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
with urllib.request.urlopen(url + "/docs", timeout=30) as r:
    assert r.headers["Content-Type"].startswith("text/html") and b"/openapi.json" in r.read()
with urllib.request.urlopen(url + "/openapi.json", timeout=30) as r:
    assert "/v1/responses" in json.load(r)["paths"]
req = urllib.request.Request(url + "/v1/responses", data=json.dumps(
    {"input": "Hello", "max_output_tokens": 8, "temperature": 0}).encode(),
    headers={"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=120) as r:
    rid = json.load(r)["id"]
with urllib.request.urlopen(f"{url}/v1/responses/{rid}", timeout=30) as r:
    assert json.load(r)["object"] == "response"
print("  /docs, /openapi.json and a stored response: OK")
EOF
}

# same_answer FROZEN.json VENV.json: the frozen and venv servers said the same thing.
same_answer() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
frozen, venv = (json.load(open(p)) for p in sys.argv[1:])
pick = lambda r: (r["model"], r["choices"][0]["message"], r["choices"][0]["finish_reason"], r["usage"])
assert pick(frozen) == pick(venv), f"frozen {pick(frozen)}\n  venv {pick(venv)}"
print(f"  same answer as the venv: {frozen['choices'][0]['message']['content']!r}")
EOF
}

# stop_and_check PORT PIDFILE [PID]: dist/mlxd --stop, then no PID file and (if ours) exit 0.
stop_and_check() {
    local port=$1 pid_file=$2 pid=${3:-}
    [ -f "$pid_file" ] || fail "no PID file $pid_file while serving on port $port"
    expect_exit 0 "$BIN" --status --port "$port"
    expect_exit 0 "$BIN" --stop --port "$port"
    cat "$WORK/out.txt"
    if [ -n "$pid" ]; then
        local code=0
        wait "$pid" || code=$?
        [ "$code" -eq 0 ] || fail "server on port $port exited $code after --stop"
    fi
    [ ! -e "$pid_file" ] || fail "PID file $pid_file is still there after --stop"
    expect_exit 3 "$BIN" --status --port "$port"
    echo "  stopped; PID file $pid_file is gone"
}

# serve_venv MODEL OUT: the same request on the venv's mlxd, for comparison.
serve_venv() {
    local port log pid
    port=$(free_port)
    log=$WORK/venv-$port.log
    "$VENV_MLXD" "$1" --port "$port" --pid-file "$WORK/venv-$port.pid" > "$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_ready "$port" "$pid"
    chat "$port" "$2"
    kill -TERM "$pid"
    wait "$pid" || fail "the venv mlxd exited $? on SIGTERM"
}

step "tiny model: build it, serve it with --daemon"
"$PY" -c 'import sys; sys.path.insert(0, "tests"); from tinymodel import build_tiny_model; build_tiny_model(sys.argv[1])' \
    "$WORK/tiny"
PORT=$(free_port)
PID_FILE=$(pid_file_for "$PORT")
case "$PID_FILE" in "$WORK"/*) ;; *) fail "PID file $PID_FILE is outside the test's HOME" ;; esac
t0=$SECONDS
"$BIN" "$WORK/tiny" --port "$PORT" --daemon > "$WORK/tiny-daemon.log" 2>&1 \
    || { cat "$WORK/tiny-daemon.log" >&2; fail "--daemon start failed"; }
cat "$WORK/tiny-daemon.log"
wait_ready "$PORT"
echo "  ready in $((SECONDS - t0)) s"
chat "$PORT" "$WORK/tiny-frozen.json"
stream "$PORT"
docs_and_responses "$PORT"
serve_venv "$WORK/tiny" "$WORK/tiny-venv.json"
same_answer "$WORK/tiny-frozen.json" "$WORK/tiny-venv.json"
stop_and_check "$PORT" "$PID_FILE"

step "tiny qwen3 model with a Qwen2Tokenizer: both modules are imported by name"
"$PY" spec/tiny_variant.py "$WORK/qwen3" qwen3 Qwen2Tokenizer
PORT=$(free_port)
PID_FILE=$(pid_file_for "$PORT")
"$BIN" "$WORK/qwen3" --port "$PORT" > "$WORK/qwen3-$PORT.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
wait_ready "$PORT" "$SERVER"
chat "$PORT" "$WORK/qwen3-frozen.json"
serve_venv "$WORK/qwen3" "$WORK/qwen3-venv.json"
same_answer "$WORK/qwen3-frozen.json" "$WORK/qwen3-venv.json"
stop_and_check "$PORT" "$PID_FILE" "$SERVER"

step "SmolLM2: serve it in the foreground"
PORT=$(free_port)
PID_FILE=$(pid_file_for "$PORT")
t0=$SECONDS
"$BIN" "$SMOLLM" --port "$PORT" > "$WORK/smollm-$PORT.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
wait_ready "$PORT" "$SERVER"
echo "  ready in $((SECONDS - t0)) s"
grep -q "listening on http://127.0.0.1:$PORT" "$WORK/smollm-$PORT.log" || fail "no 'listening on' log line"
grep -q "ready: serving" "$WORK/smollm-$PORT.log" || fail "no 'ready: serving' log line"
chat "$PORT" "$WORK/smollm-frozen.json"
"$PY" -c 'import json, sys; c = json.load(open(sys.argv[1]))["choices"][0]["message"]["content"]; assert "Paris" in c, c' \
    "$WORK/smollm-frozen.json" || fail "SmolLM2 did not say Paris"
serve_venv "$SMOLLM" "$WORK/smollm-venv.json"
same_answer "$WORK/smollm-frozen.json" "$WORK/smollm-venv.json"
stop_and_check "$PORT" "$PID_FILE" "$SERVER"

step "--models: the tiny and the qwen3 model, each in a worker started from the binary itself"
mkdir -p "$WORK/several"
cp -R "$WORK/tiny" "$WORK/several/tiny"
cp -R "$WORK/qwen3" "$WORK/several/qwen3"
PORT=$(free_port)
PID_FILE=$(pid_file_for "$PORT")
"$BIN" --models "$WORK/several" --preload tiny --port "$PORT" > "$WORK/several-$PORT.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
wait_ready "$PORT" "$SERVER"
chat "$PORT" "$WORK/several-tiny.json" tiny
chat "$PORT" "$WORK/several-qwen3.json" qwen3
same_answer "$WORK/several-tiny.json" "$WORK/tiny-venv.json"
same_answer "$WORK/several-qwen3.json" "$WORK/qwen3-venv.json"
WORKERS=$("$PY" - "$PORT" "$BIN" <<'EOF'
import json, os, sys, urllib.request
with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/admin/status", timeout=30) as r:
    models = {m["id"]: m for m in json.load(r)["models"]}
assert {i: m["state"] for i, m in models.items()} == {"qwen3": "ready", "tiny": "ready"}, models
binary = os.path.realpath(sys.argv[2])
for m in models.values():
    cmdline = f"/proc/{m['pid']}/cmdline"
    if os.path.exists(cmdline):  # macOS has no /proc: there, alive and ready is what we check
        argv = open(cmdline, "rb").read().split(b"\0")
        assert os.path.realpath(argv[0].decode()) == binary and b"-m" not in argv, argv
print(" ".join(str(m["pid"]) for m in models.values()))
EOF
)
echo "  workers (the binary itself): pids $WORKERS"
"$BIN" --status --port "$PORT" | grep -q "tiny: ready" || fail "--status does not list the models"
stop_and_check "$PORT" "$PID_FILE" "$SERVER"
for pid in $WORKERS; do
    if kill -0 "$pid" 2>/dev/null; then fail "worker $pid is still running after --stop"; fi
done

echo "test-dist: all passed ($NAME)"
