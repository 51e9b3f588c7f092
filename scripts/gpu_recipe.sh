#!/usr/bin/env bash
# The `gpu` recipe in GPU calls of at most 10 minutes, for a machine with no package index:
# run from the repository root; the source tree goes on PYTHONPATH.
#
#   OUT=/tmp/out scripts/gpu_recipe.sh train   # data, both models, export      (~8 minutes)
#   OUT=/tmp/out scripts/gpu_recipe.sh eval    # both models on the 1,000 problems (~4 minutes)
#   OUT=/tmp/out scripts/gpu_recipe.sh all     # both in one call (only with a long call limit)
#
# train: Countdown-4 data (gpu preset), the gpu-10m APR model for TRAIN_S seconds, then the
#   SoS+ model for the same number of steps (the same token budget); bf16 exports. With CD3=1
#   the cpu task's pair (Countdown-3, cpu-mini) trains beside it.
# eval: greedy APR and SoS+, APR at child budgets, SoS+ cons@4, all at once, each under
#   `timeout`: an unfinished run keeps its records, and the report counts only its first
#   unbroken run of problems. It reads the models the train phase left in $RUN (a warm
#   machine keeps ignored folders between calls) and needs no network.
# Results: $OUT/log.txt, $OUT/logs.tgz and $OUT/runs.tgz.part-* (<= 15 MB each), at most 8
#   files in all (the device returns no more: the first run lost a part to its 9th file).
#   Unpack here with `cat runs.tgz.part-* | tar xzf -`.
# Sizes are environment variables so a CPU dry run can shrink them (see the defaults).
set -uo pipefail
PHASE=${1:-all}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
OUT=${OUT:?set OUT to the output folder}
RUN=${RUN:-runs/gpu}                # Countdown-4 pipeline folder
RUN3=${RUN3:-runs/gpu_cd3}          # Countdown-3 (cpu task) pipeline folder
CD3=${CD3:-0}                       # 1: also train the cpu task's pair beside the gpu one
DEVICE=${DEVICE:-cuda}
PROBLEMS=${PROBLEMS:-12000}         # Countdown-4 training problems
TRAIN_S=${TRAIN_S:-220}             # APR training seconds (SoS+ then trains as many steps)
MAX_STEPS=${MAX_STEPS:-5000}        # cap (and cosine length when the budget allows more)
MODEL=${MODEL:-gpu-10m}
BATCH=${BATCH:-32}
CONTEXT=${CONTEXT:-4096}
ATTN=${ATTN:-flex_attention}        # falls back to sdpa if it fails
COMPILE=${COMPILE:-0}               # 1: torch.compile the training model (untested on GPU)
PROBLEMS3=${PROBLEMS3:-20000}       # Countdown-3 training problems (CD3=1)
TRAIN3_S=${TRAIN3_S:-90}
BATCH3=${BATCH3:-64}
EVAL_S=${EVAL_S:-220}               # wall clock for all evaluations together
LIMIT=${LIMIT:-1000}                # greedy APR / SoS+ problems
SUB_LIMIT=${SUB_LIMIT:-300}         # budget sweep and cons@4 problems
SLOTS=${SLOTS:-768}
WORKERS=${WORKERS:-16}
DEADLINE=${DEADLINE:-565}           # seconds after start by which the results must be packed
apr() { python3 -m apr "$@"; }
log() { echo "[$(date +%T) +$((SECONDS))s] $*" | tee -a "$OUT/log.txt"; }
mkdir -p "$OUT/logs"

log "phase $PHASE; machine: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo no GPU); $(nproc) cores"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/log.txt"

train_phase() {
  local CD3_PID=""
  if [ "$CD3" = 1 ]; then  # short rows: sdpa's dense mask costs little at 1,024 tokens, and needs no compile
    apr pipeline --preset cpu --out "$RUN3" --stages data,train,export --export "$RUN3/export/cd3" --device "$DEVICE" \
      --train-problems "$PROBLEMS3" --steps "$MAX_STEPS" --train-seconds "$TRAIN3_S" --batch-size "$BATCH3" --workers 4 \
      > "$OUT/logs/train_cd3.log" 2>&1 &
    CD3_PID=$!
  fi
  gpu() {
    apr pipeline --preset gpu --out "$RUN" --device "$DEVICE" --train-problems "$PROBLEMS" --steps "$MAX_STEPS" \
      --train-seconds "$TRAIN_S" --model "$MODEL" --batch-size "$BATCH" --context "$CONTEXT" --workers "$WORKERS" "$@"
  }
  local compile=(); [ "$COMPILE" = 1 ] && compile=(--compile)
  log "data"
  gpu --stages data > "$OUT/logs/train.log" 2>&1 || log "data failed"
  log "train ($ATTN${compile:+, compiled})"
  if ! gpu --stages train --attn "$ATTN" "${compile[@]}" >> "$OUT/logs/train.log" 2>&1; then
    log "train with $ATTN failed: $(grep -v '^\s*$' "$OUT/logs/train.log" | tail -1); retrying with sdpa, eager"
    rm -rf "$RUN/train"
    gpu --stages train --attn sdpa >> "$OUT/logs/train.log" 2>&1 || log "train failed"
  fi
  gpu --stages export --export "$RUN/export/default" >> "$OUT/logs/train.log" 2>&1 || log "export failed"
  grep -h "time budget" "$OUT/logs/train.log" | tail -3 >> "$OUT/log.txt"
  log "trained: $(grep -h 'tokens_per_s' "$RUN"/train/*/metrics.jsonl 2>/dev/null | tail -1)"
  if [ -n "$CD3_PID" ]; then
    wait "$CD3_PID"; log "cd3 pair: exit $? $(grep -h 'tokens_per_s' "$RUN3"/train/*/metrics.jsonl 2>/dev/null | tail -1)"
  fi
}

eval_phase() {
  local apr_m=$RUN/export/default sos_m=$RUN/export/default-sos
  local budget=$(( EVAL_S < DEADLINE - SECONDS - 30 ? EVAL_S : DEADLINE - SECONDS - 30 ))  # leave time to pack
  budget=$(( budget > 5 ? budget : 5 ))  # (timeout 0 would mean none)
  ev() {  # name, then apr eval arguments
    local name=$1; shift
    timeout "$budget" python3 -m apr eval --out "$RUN/eval/$name" --context "$CONTEXT" --device "$DEVICE" --quiet "$@" \
      > "$OUT/logs/eval_$name.log" 2>&1
    log "eval $name: exit $? ($(wc -l < "$RUN/eval/$name/records.jsonl" 2>/dev/null) records)"
  }
  log "evaluations: $budget s"
  ev apr --model "$apr_m" --method apr --limit "$LIMIT" --max-slots "$SLOTS" --max-in-flight 256 &
  ev sos --model "$sos_m" --method sos --limit "$LIMIT" --max-slots 256 --max-in-flight 256 &
  ev sos_cons4 --model "$sos_m" --method cons@4 --limit "$SUB_LIMIT" --max-slots 256 --max-in-flight 256 &
  ev apr_budget2 --model "$apr_m" --method apr --child-budget 2 --limit "$SUB_LIMIT" --max-slots 256 --max-in-flight 128 &
  ev apr_budget6 --model "$apr_m" --method apr --child-budget 6 --limit "$SUB_LIMIT" --max-slots 256 --max-in-flight 64 &
  wait
  nvidia-smi --query-gpu=memory.used --format=csv,noheader >> "$OUT/log.txt" 2>/dev/null
}

case "$PHASE" in
  train) train_phase ;;
  eval) eval_phase ;;
  all) train_phase; eval_phase ;;
  *) echo "usage: OUT=DIR $0 train|eval|all" >&2; exit 2 ;;
esac

log "packing"
dirs=("$RUN"); [ -d "$RUN3" ] && dirs+=("$RUN3")
skip=(--exclude='*/data' --exclude='*/checkpoints' --exclude='*/final'); [ "$PHASE" = eval ] && skip+=(--exclude='*/export')
tar czf - "${skip[@]}" "${dirs[@]}" 2>>"$OUT/log.txt" \
  | split -b 15M - "$OUT/runs.tgz.part-"
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
ls -la "$OUT" >> "$OUT/log.txt"
log "done"
