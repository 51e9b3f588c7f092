#!/usr/bin/env bash
# Issue 20's ablation: the committed Countdown-3 models with and without exact arithmetic on
# problems drawn fresh (seed 17300, used for nothing else), APR at child budgets 2 and 4, SoS+,
# and the symbolic solvers as references; then `apr report` over all runs (every window of
# each run from its accuracy_within_context; exact rows labelled and tabled apart).
#
#   bash benchmarks/ablation_exact.sh runs/ablation20 docs/reports/exact_ablation
set -euo pipefail
OUT=${1:-runs/ablation20}
REPORT=${2:-docs/reports/exact_ablation}
N=${N:-400}
mkdir -p "$OUT"
[ -f "$OUT/fresh.jsonl" ] || apr data problems --n "$N" --seed 17300 --num-count 3 --out "$OUT/fresh.jsonl"
export OMP_NUM_THREADS=1
ev() { apr --log-level warning eval --problems "$OUT/fresh.jsonl" --quiet "$@"; }
for mode in model exact; do
  ev --model models/rl/default --method apr --child-budget 2 --arithmetic $mode --out "$OUT/apr_b2_$mode" &
  ev --model models/rl/default --method apr --child-budget 4 --arithmetic $mode --out "$OUT/apr_b4_$mode" &
  wait
  ev --model models/rl/default-sos --method sos --arithmetic $mode --out "$OUT/sos_$mode"
done
ev --method solver-apr --child-budget 4 --out "$OUT/solver_apr_b4"
ev --method solver-sos --out "$OUT/solver_sos"
apr report "$OUT"/apr_b2_model "$OUT"/apr_b4_model "$OUT"/sos_model "$OUT"/apr_b2_exact "$OUT"/apr_b4_exact \
  "$OUT"/sos_exact "$OUT"/solver_apr_b4 "$OUT"/solver_sos --out "$REPORT"
