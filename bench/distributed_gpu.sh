#!/bin/bash
# One model on one GPU vs across two (issue 18's measurements), in one call of at most ~9 minutes
# on the 2-GPU machine (kind nvidia-h200-x2). MLX travels as in /work/shared/device/README.md:
#   call 1, carry [".whl-a"]:               bash .whl-a/stage.sh
#   call 2, carry [".whl-b", ".gpu"]: source .whl-b/install.sh && bash bench/distributed_gpu.sh
# (TOK: the tokenizer files of the SmolLM2 export, vocab 49152 (bench/README.md): .gpu/tok/ or
# .bench-tok/, whichever is there; both are git-ignored, so carried.)
# Phases, each with its own time limit, so one that fails or hangs leaves the others' results:
#   1. model   the random 8B-shape 4-bit llama (bench/make_random_model.py)
#   2. step    bench/distributed_step.py: a decode step split into compute and collectives, tensor
#              (float32 sums) vs tensor-bf16 (MLX's own sums) vs pipeline vs one GPU, per batch
#              size; greedy tokens of each against one GPU's (same dense weights)
#   3. servers bench/distributed.py: mlxd on one GPU, tensor x2, pipeline x2 (mlx.launch, nccl),
#              bench.py's workload at 1/32/64 streams (tok/s, TTFT), greedy replies vs one GPU's,
#              then one GPU serving dense weights (greedy reference for the groups' dense weights)
# Everything lands under $OUT; progress.txt says what ran and how it ended. Four server modes at
# MODE_S=150 do not all fit one call with the model phase: split SERVER_MODES over two calls.
# On a CPU: BACKEND=ring SHAPE=tiny PY=.venv/bin/python CONC=1,4 TOKENS=16 bash bench/distributed_gpu.sh
set -u
OUT=${OUT:-/tmp/distributed-out}
PY=${PY:-python3}
BACKEND=${BACKEND:-nccl}
SHAPE=${SHAPE:-8b}
BUDGET_S=${BUDGET_S:-560}      # the whole call (the device tool allows 600 s); no phase starts past it
MODEL_S=${MODEL_S:-120}        # phase limits, seconds
STEP_S=${STEP_S:-150}
MODE_S=${MODE_S:-150}          # per server configuration, cold start included (90 s cut "one" and "tensor" short)
PHASES=${PHASES:-model step servers}
CONC=${CONC:-1,32,64}
TOKENS=${TOKENS:-128}
MODEL=${MODEL:-/tmp/rand-$SHAPE}
WEIGHTS=${WEIGHTS:-auto}       # mlxd --weights for the servers (a group: dense on CUDA if it fits)
SERVER_MODES=${SERVER_MODES:-one,tensor,pipeline,one-dense}
STEP_MODES=${STEP_MODES:-tensor,one,tensor-bf16,pipeline}  # rank 1 waits while rank 0 runs one
STEP_ARGS=${STEP_ARGS:---weights dense --batches 1,32,64 --steps 8 --warmup 2 --greedy 64}
TOK=${TOK:-$(for d in .gpu/tok .bench-tok; do [ -f $d/tokenizer.json ] && echo $d && break; done)}
LIMIT=${LIMIT:-}               # e.g. 3584M: --memory-limit per rank for the groups (then quantized)
mkdir -p "$OUT"
# The machine keeps NVLink multicast off (KINDS.md); say so again for every process started here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - t0))); }
say() { echo "[gpu $(($(date +%s) - t0))s] $*" | tee -a "$OUT/progress.txt"; }
limit() { # the smaller of a phase's limit and what is left of the call
  local l; l=$(left); [ "$1" -lt "$l" ] && echo "$1" || echo "$l"
}
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
launch() { "$PY" -c "import sys; from mlx._distributed_utils.launch import main; sys.argv[0]='mlx.launch'; main()" "$@"; }
wants() { [[ " $PHASES " == *" $1 "* ]]; }

{ nvidia-smi -L; "$PY" -c 'import mlx.core as mx, mlx_lm; print("mlx", mx.__version__, "mlx-lm", mlx_lm.__version__, mx.default_device())'; } > "$OUT/machine.txt" 2>&1
git log -1 --format='mlxd %h %s' >> "$OUT/machine.txt" 2>/dev/null
timeout 60 "$PY" bench/hostcheck.py --out "$OUT/host.json" > "$OUT/host.txt" 2>&1
say "machine: $(tr '\n' ' ' < "$OUT/machine.txt" | cut -c1-300)"

if wants model && [ ! -f "$MODEL/config.json" ]; then
  timeout "$(limit "$MODEL_S")" "$PY" bench/make_random_model.py --shape "$SHAPE" --bits 4 \
    --tokenizer-from "${TOK:-.gpu/tok}" --out "$MODEL" > "$OUT/model.json" 2> "$OUT/model.err"
  say "model rc=$? $(cat "$OUT/model.json" 2>/dev/null | cut -c1-300)"
fi
[ -f "$MODEL/config.json" ] || { say "no model at $MODEL: nothing to measure"; exit 1; }

if wants step; then
  if [ "$(left)" -gt 40 ]; then
    portflag=--starting-port; [ "$BACKEND" = nccl ] && portflag=--nccl-port
    # shellcheck disable=SC2086  # STEP_ARGS is a list of arguments
    timeout "$(limit "$STEP_S")" bash -c "$(declare -f launch); PY=$PY; launch --backend $BACKEND \
      -n 2 --hosts 127.0.0.1 $portflag $(free_port) --python $PY -- bench/distributed_step.py \
      --model $MODEL --backend $BACKEND --modes $STEP_MODES $STEP_ARGS --out $OUT/step.json" \
      > "$OUT/step.log" 2>&1
    rc=$?
    # each rank prints the same lines; one copy of rank 0's is enough
    say "step rc=$rc"; grep -E 'greedy .* vs |batch' "$OUT/step.log" | sort -u | tee -a "$OUT/progress.txt"
  else
    say "no time left for the step phase"
  fi
fi

if wants servers; then
  n=$(echo "$SERVER_MODES" | tr ',' '\n' | wc -l)
  if [ "$(left)" -gt 60 ]; then
    limited=(); [ -n "$LIMIT" ] && limited=(--memory-limit "$LIMIT")
    # the per-mode limits inside; the outer one only in case the script itself hangs
    timeout "$(limit $((n * MODE_S + 30)))" "$PY" bench/distributed.py --model "$MODEL" \
      --backend "$BACKEND" --ranks 2 --modes "$SERVER_MODES" --concurrency "$CONC" \
      --max-tokens "$TOKENS" --rounds 2 --warmup-rounds 1 --weights "$WEIGHTS" "${limited[@]}" \
      --mode-timeout "$MODE_S" --out "$OUT/servers.json" > "$OUT/servers.stdout" 2> "$OUT/servers.stderr"
    say "servers rc=$?"; cat "$OUT/servers.txt" 2>/dev/null | tee -a "$OUT/progress.txt"
    tail -5 "$OUT/servers.stderr"
  else
    say "no time left for the servers"
  fi
fi
say "done"
