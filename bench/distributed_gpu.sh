#!/bin/bash
# One model on one GPU vs across two (issue 18's measurements), in one go on the 2-GPU machine:
#   source .whl-b/install.sh && bash bench/distributed_gpu.sh
# (carry .bench-tok/: tokenizer files of the SmolLM2 export, vocab 49152). Writes under $OUT.
# BACKEND=ring SHAPE=tiny PY=.venv/bin/python bash bench/distributed_gpu.sh  tries it on a CPU.
set -u
OUT=${OUT:-/tmp/distributed-out}
PY=${PY:-python3}
BACKEND=${BACKEND:-nccl}
SHAPE=${SHAPE:-8b}
LIMIT=${LIMIT:-3584M}          # per rank: the 8B model (4.15 GB) does not fit one rank's share
BUDGET_S=${BUDGET_S:-470}      # stop starting new phases past this
CONC=${CONC:-1,32,64}
TOKENS=${TOKENS:-128}
MODEL=${MODEL:-/tmp/rand-$SHAPE}
SERVERS=${SERVERS:-1}          # 0: only the step split (and greedy tokens) per mode
WEIGHTS=${WEIGHTS:-auto}       # mlxd --weights for the servers
STEP_ARGS=${STEP_ARGS:-}       # more distributed_step.py arguments (--batches, --steps, ...)
ORDER=${ORDER:-tensor pipeline one}
mkdir -p "$OUT"
# The machine keeps NVLink multicast off (KINDS.md); say so again for every process started here.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
t0=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - t0))); }
say() { echo "[gpu $(( $(date +%s) - t0 ))s] $*" | tee -a "$OUT/progress.txt"; }
launch() { "$PY" -c "import sys; from mlx._distributed_utils.launch import main; sys.argv[0]='mlx.launch'; main()" "$@"; }

{ nvidia-smi -L; "$PY" -c 'import mlx.core as mx, mlx_lm; print("mlx", mx.__version__, "mlx-lm", mlx_lm.__version__)'; } > "$OUT/machine.txt" 2>&1
say "machine: $(tr '\n' ' ' < "$OUT/machine.txt")"
if [ ! -f "$MODEL/config.json" ]; then
  "$PY" bench/make_random_model.py --shape "$SHAPE" --bits 4 --tokenizer-from .bench-tok \
    --out "$MODEL" > "$OUT/model.json" 2> "$OUT/model.err" || { say "model build failed"; cat "$OUT/model.err"; exit 1; }
fi
say "model: $(cat "$OUT/model.json" 2>/dev/null)"

# 1. servers: one GPU, tensor parallel, pipeline parallel (bench.py's workload), then one GPU
#    under the per-rank memory limit.
if [ "$SERVERS" = 1 ]; then
  say "servers (left $(left)s)"
  timeout $(( $(left) - 90 )) "$PY" bench/distributed.py --model "$MODEL" --backend "$BACKEND" --ranks 2 \
    --concurrency "$CONC" --max-tokens "$TOKENS" --memory-limit "$LIMIT" --refusal-check \
    --weights "$WEIGHTS" --out "$OUT/servers.json" > "$OUT/servers.stdout" 2> "$OUT/servers.stderr"
  say "servers rc=$?"; cat "$OUT/servers.stdout"; tail -5 "$OUT/servers.stderr"
fi

# 2. where a step goes: compute vs collectives, per batch size.
step() {  # name, then launcher arguments or nothing
  local name=$1; shift
  [ "$(left)" -gt 40 ] || { say "no time left for step/$name"; return; }
  if [ "$name" = one ]; then
    timeout $(( $(left) - 5 )) "$PY" bench/distributed_step.py --model "$MODEL" $STEP_ARGS \
      --out "$OUT/step-$name.json" > "$OUT/step-$name.stdout" 2>&1
  else
    # a free port of its own: mlx.launch's fixed default could meet another group's
    local port portflag=--starting-port
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
    [ "$BACKEND" = nccl ] && portflag=--nccl-port
    timeout $(( $(left) - 5 )) bash -c "$(declare -f launch); PY=$PY; launch --backend $BACKEND -n 2 --hosts 127.0.0.1 \
      $portflag $port --python $PY -- bench/distributed_step.py --model $MODEL --backend $BACKEND $* \
      $STEP_ARGS --out $OUT/step-$name.json" > "$OUT/step-$name.stdout" 2>&1
  fi
  say "step/$name rc=$?"; grep -v '^\[' "$OUT/step-$name.stdout" | tail -12
}
for mode in $ORDER; do
  case $mode in
    tensor) step tensor ;;
    pipeline) step pipeline --pipeline ;;
    one) step one ;;
  esac
done
say "done"
