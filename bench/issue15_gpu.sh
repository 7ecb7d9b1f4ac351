#!/bin/bash
# Issue 15's side-by-side run on one GPU in one device call (at most 600 s): mlxd with no flags
# against mlx_lm.server, both servers in the same call, as the issue asks. MLX travels as in
# /work/shared/device/README.md:
#   call 1, carry [".whl-a"]:               bash .whl-a/stage.sh
#   call 2, carry [".whl-b", ".gpu"]:  source .whl-b/install.sh && bash bench/issue15_gpu.sh
# (TOK: the SmolLM2 export's tokenizer files, .gpu/tok/ or .bench-tok/, both git-ignored, so
# carried; bench/README.md.) It fits the call by leaving out what the last runs already gave:
# levels 1, 32 and 64 only (mlx_lm.server's 8 streams took 28 s, its 64 about 130 s), and no
# --kv-bits variant (KV=1 adds it back: ~90 s more). Everything lands under $OUT; bench.txt is
# bench.py's report, logs/ the servers' logs (requests left out).
set -u
OUT=${OUT:-/tmp/issue15-out}
PY=${PY:-python3}
MODEL=${MODEL:-/tmp/rand-8b}
CONC=${CONC:-1,32,64}
SERVERS=${SERVERS:-mlxd,mlx_lm.server}
WORKLOADS=${WORKLOADS:-shared-prefix,long-prompt}
RESTART=${RESTART---restart}   # RESTART= leaves the second start out
LIMIT_S=${LIMIT_S:-540}        # bench.py's share of the call; it reports what it measured when cut
TOK=${TOK:-$(for d in .gpu/tok .bench-tok; do [ -f $d/tokenizer.json ] && echo $d && break; done)}
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
test -f "$MODEL/config.json" || timeout 150 "$PY" bench/make_random_model.py --shape 8b --bits 4 \
  --tokenizer-from "$TOK" --out "$MODEL" > "$OUT/make.log" 2>&1
# which host this is (clocks, CPU, launch cost, matmul bandwidth): hosts differ (hostcheck.py)
timeout 60 "$PY" bench/hostcheck.py --out "$OUT/host.json" > "$OUT/host.txt" 2>&1
cat "$OUT/host.txt"
variant=()
[ "${KV:-0}" = 1 ] && variant=(--mlxd-variant "kv8=--kv-bits 8")
# one more mlxd variant, NAME=ARGS (e.g. "kvlate=--kv-bits 8 --quantized-kv-start 100000")
[ -n "${EXTRA_VARIANT:-}" ] && variant+=(--mlxd-variant "$EXTRA_VARIANT")
timeout "$LIMIT_S" "$PY" bench/bench.py --model "$MODEL" --servers "$SERVERS" \
  --concurrency "$CONC" --workloads "$WORKLOADS" --workload-servers mlxd \
  "${variant[@]}" $RESTART --kernel-cache cold --out "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
echo "bench rc=$?"
mkdir -p "$OUT/logs"
for f in bench/logs/*/*.log; do
  [ -f "$f" ] && grep -v "GET /health\|POST /v1" "$f" | tail -c 200000 > "$OUT/logs/$(basename "$f")"
done
tail -60 "$OUT/bench.txt"
