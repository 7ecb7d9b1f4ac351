#!/bin/bash
# Issue 15's open question in one device call (~6 min, one H200): why served --kv-bits 8 decode
# steps are slower than full precision's (8B, 64 streams: 13-20 ms against 11-15) and a freshly
# prefilled batch's first decode step takes ~380 ms against ~71, while kv_step_bench puts the
# kernels and cache alone under full precision (bench/results/gpu-h200-kv8-profile-20261201.txt).
# MLX's CUDA backend runs each buffer of up to 100 ops (H100/H200) as a CUDA graph and keeps 400
# instantiated graphs (MLX_CUDA_GRAPH_CACHE_SIZE): if kv8's steps make graph keys that do not
# repeat, or more of them than fit, every step instantiates graphs again. So: the same served
# rounds (bench/served_profile.py --phases) with the default graphs, a 10x graph cache, and no
# graphs; then the in-process pipelined loop with the attention swapped out per variant.
#   call 1, carry [".whl-a"]:          bash .whl-a/stage.sh
#   call 2, carry [".whl-b", ".gpu"]:  source .whl-b/install.sh && bash bench/kv8_gpu_probe.sh
set -u
OUT=${OUT:-/tmp/kv8-probe}
MODEL=${MODEL:-/tmp/rand-8b}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
test -f "$MODEL/config.json" || timeout 150 python3 bench/make_random_model.py --shape 8b --bits 4 \
  --tokenizer-from .gpu/tok --out "$MODEL" > "$OUT/make.log" 2>&1
run() {  # NAME, then environment assignments
  local name=$1; shift
  env "$@" timeout 150 python3 bench/served_profile.py --model "$MODEL" --streams 64 --rounds 3 \
    --top 40 --variants "full=;kv8=--kv-bits 8" --phases --out "$OUT/$name.txt" > "$OUT/$name.out" 2>&1
  echo "== $name ($*)"; grep -h "^===\|^round 2\|^  decode\|^  prefill\|evaluated GenerationBatch.__init__" "$OUT/$name.txt"
}
# STEPS picks the parts (a device call has 600 s; all four take ~7 min with the model's creation)
STEPS=${STEPS:-"default 4000 off probe"}
for step in $STEPS; do
  case $step in
    default) run graphs-default ;;
    4000) run graphs-4000 MLX_CUDA_GRAPH_CACHE_SIZE=4000 ;;
    off) run graphs-off MLX_USE_CUDA_GRAPHS=0 ;;
    probe) timeout 150 python3 bench/kv_decode_probe.py --model "$MODEL" --dense > "$OUT/probe.txt" 2>&1
           cat "$OUT/probe.txt" ;;
  esac
done
