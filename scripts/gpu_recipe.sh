#!/usr/bin/env bash
# The `gpu` recipe in one command that fits a 10-minute GPU call, for a machine with no
# package index: run from the repository root with the source tree on PYTHONPATH.
#
#   OUT=/tmp/out scripts/gpu_recipe.sh        # everything lands in $OUT as tar.gz parts
#
# 1. Countdown-4 data (gpu preset) and Countdown-3 data (cpu preset's task), in parallel.
# 2. gpu-10m APR model for TRAIN_S seconds, then the SoS+ model for the same number of steps
#    (the same token budget); meanwhile the cpu task's pair (cpu-mini) trains beside it, so
#    the CPU RL experiments start from models that learned the task.
# 3. Both Countdown-4 models evaluated at once on the shared 1,000 validation problems (greedy
#    APR and SoS+, APR at child budgets, SoS+ cons@4), each under `timeout`: an unfinished
#    run keeps its records and the report counts only its first unbroken run of problems.
# 4. The run folders (no data, no optimizer checkpoints) as tar.gz parts of <= 15 MB.
#
# Sizes are environment variables so that a CPU dry run can shrink them (see the defaults).
set -uo pipefail
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
OUT=${OUT:?set OUT to the output folder}
RUN=${RUN:-runs/gpu}                # Countdown-4 pipeline folder
RUN3=${RUN3:-runs/gpu_cd3}          # Countdown-3 (cpu task) pipeline folder
DEVICE=${DEVICE:-cuda}
PROBLEMS=${PROBLEMS:-20000}         # Countdown-4 training problems
TRAIN_S=${TRAIN_S:-130}             # APR training seconds (SoS+ then trains as many steps)
MAX_STEPS=${MAX_STEPS:-5000}        # cap (and cosine length when the budget allows more)
MODEL=${MODEL:-gpu-10m}
BATCH=${BATCH:-32}
CONTEXT=${CONTEXT:-4096}
ATTN=${ATTN:-flex_attention}
PROBLEMS3=${PROBLEMS3:-20000}       # Countdown-3 training problems
TRAIN3_S=${TRAIN3_S:-90}
BATCH3=${BATCH3:-64}
EVAL_S=${EVAL_S:-140}               # wall clock for all evaluations together
DEADLINE=${DEADLINE:-565}           # seconds after start by which the results must be packed
LIMIT=${LIMIT:-1000}                # greedy APR / SoS+ problems
SUB_LIMIT=${SUB_LIMIT:-300}         # budget sweep and cons@4 problems
SLOTS=${SLOTS:-512}
WORKERS=${WORKERS:-16}
apr() { python3 -m apr.cli "$@"; }
log() { echo "[$(date +%T) +$((SECONDS))s] $*" | tee -a "$OUT/log.txt"; }
mkdir -p "$OUT"

log "machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo no GPU); $(nproc) cores"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/log.txt"

# ---- 1+2: data and training; the cpu task's pair runs beside the gpu one
(  # short rows (1,024 tokens): sdpa's dense mask costs little here, and it needs no compile
  apr pipeline --preset cpu --out "$RUN3" --stages data,train,export --export "$RUN3/export/cd3" --device "$DEVICE" \
    --train-problems "$PROBLEMS3" --steps "$MAX_STEPS" --train-seconds "$TRAIN3_S" --batch-size "$BATCH3" --workers 4 \
    > "$OUT/train_cd3.log" 2>&1
) &
CD3=$!
gpu_pipeline() {
  apr pipeline --preset gpu --out "$RUN" --device "$DEVICE" --train-problems "$PROBLEMS" --steps "$MAX_STEPS" \
    --train-seconds "$TRAIN_S" --model "$MODEL" --batch-size "$BATCH" --context "$CONTEXT" --workers "$WORKERS" "$@"
}
log "gpu recipe: data"
gpu_pipeline --stages data > "$OUT/train.log" 2>&1 || { log "data failed"; tail -5 "$OUT/train.log"; }
log "gpu recipe: train ($ATTN)"
if ! gpu_pipeline --stages train --attn "$ATTN" >> "$OUT/train.log" 2>&1; then
  log "train with $ATTN failed: $(grep -v '^\s*$' "$OUT/train.log" | tail -1); retrying with sdpa"
  rm -rf "$RUN/train"
  gpu_pipeline --stages train --attn sdpa >> "$OUT/train.log" 2>&1 || log "train failed"
fi
gpu_pipeline --stages export --export "$RUN/export/default" >> "$OUT/train.log" 2>&1 || log "export failed"
log "gpu recipe: trained; $(grep -h 'tokens_per_s' "$RUN"/train/*/metrics.jsonl 2>/dev/null | tail -1)"

# ---- 3: evaluations, all at once
APR_M=$RUN/export/default SOS_M=$RUN/export/default-sos
ev() {  # name, then apr eval arguments
  local name=$1; shift
  timeout "$EVAL_S" python3 -m apr.cli eval --out "$RUN/eval/$name" --context "$CONTEXT" --device "$DEVICE" --quiet "$@" \
    > "$OUT/eval_$name.log" 2>&1
  log "eval $name: exit $? ($(wc -l < "$RUN/eval/$name/records.jsonl" 2>/dev/null) records)"
}
EVAL_S=$(( EVAL_S < DEADLINE - SECONDS - 30 ? EVAL_S : DEADLINE - SECONDS - 30 ))  # leave time to pack
EVAL_S=$(( EVAL_S > 5 ? EVAL_S : 5 ))  # (timeout 0 would mean none)
log "evaluations: $EVAL_S s"
ev apr --model "$APR_M" --method apr --limit "$LIMIT" --max-slots "$SLOTS" --max-in-flight 160 &
ev sos --model "$SOS_M" --method sos --limit "$LIMIT" --max-slots 256 --max-in-flight 256 &
ev sos_cons4 --model "$SOS_M" --method cons@4 --limit "$SUB_LIMIT" --max-slots 256 --max-in-flight 256 &
ev apr_budget2 --model "$APR_M" --method apr --sub-call-budget 2 --limit "$SUB_LIMIT" --max-slots 256 --max-in-flight 96 &
ev apr_budget6 --model "$APR_M" --method apr --sub-call-budget 6 --limit "$SUB_LIMIT" --max-slots 256 --max-in-flight 64 &
wait $(jobs -p | grep -v "^$CD3$")
kill "$CD3" 2>/dev/null  # must be done by now; do not miss the deadline for it
wait "$CD3"; log "cd3 pair: exit $? $(grep -h 'tokens_per_s' "$RUN3"/train/*/metrics.jsonl 2>/dev/null | tail -1)"
nvidia-smi --query-gpu=memory.used --format=csv,noheader >> "$OUT/log.txt" 2>/dev/null

# ---- 4: results back
log "packing"
tar czf - --exclude='*/data' --exclude='*/checkpoints' --exclude='*/final' "$RUN" "$RUN3" 2>>"$OUT/log.txt" \
  | split -b 15M - "$OUT/runs.tgz.part-"
ls -la "$OUT" >> "$OUT/log.txt"
log "done"
