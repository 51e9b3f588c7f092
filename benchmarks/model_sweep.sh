#!/usr/bin/env bash
# Issue 17, item 5: the CPU line's models over child budgets and context windows, beside their
# symbolic solvers at the same budgets, on problems drawn fresh (seed 17400, used for nothing
# else, excluding every problem the CPU line trained on). One run per budget at the model's
# window; `apr report` derives every smaller window of each run (accuracy within W). Also, at
# the model's own budget: the `verified` join rule (a child's false claim is joined as a
# failed sub search) and exact arithmetic, both opt-in and labelled, to show what the search
# alone would do.
#
#   bash benchmarks/model_sweep.sh runs/sweep17 docs/reports/cpu_sweep models/cpu/default models/cpu/default-sos \
#       runs/s2/s1_train.jsonl runs/cpu_s2_plain/data/train.jsonl
# (REF_APR=models/default REF_SOS=models/default-sos: the committed pair on the same problems)
set -euo pipefail
OUT=${1:-runs/sweep17}; REPORT=${2:-docs/reports/cpu_sweep}
APR=${3:-models/cpu/default}; SOS=${4:-models/cpu/default-sos}
shift $(( $# < 4 ? $# : 4 ))
N=${N:-400}; BUDGETS=${BUDGETS:-"1 2 3 4 6"}
mkdir -p "$OUT"
excl=(); for f in "$@"; do excl+=(--exclude "$f"); done
[ -f "$OUT/fresh.jsonl" ] || apr --log-level warning data problems --n "$N" --seed 17400 --num-count 3 "${excl[@]}" \
  --out "$OUT/fresh.jsonl"
export OMP_NUM_THREADS=1
ev() { local out=$1; shift; [ -f "$out/summary.json" ] || apr --log-level warning eval --problems "$OUT/fresh.jsonl" --quiet --out "$out" "$@"; }
own=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]+'/apr.json')).get('child_budget') or 4)" "$APR")
runs=()
for b in $BUDGETS; do
  ev "$OUT/apr_b$b" --model "$APR" --method apr --child-budget "$b" &
  ev "$OUT/solver_apr_b$b" --method solver-apr --child-budget "$b"
  wait
  [ "$b" = "$own" ] && runs=("$OUT/apr_b$b" "${runs[@]}") || runs+=("$OUT/apr_b$b")  # own budget first: the report's APR
done
ev "$OUT/sos" --model "$SOS" --method sos &
ev "$OUT/apr_b${own}_verified" --model "$APR" --method apr --child-budget "$own" --join-rule verified --label "APR greedy, budget $own, verified join"
wait
ev "$OUT/sos_exact" --model "$SOS" --method sos --arithmetic exact &
ev "$OUT/apr_b${own}_exact" --model "$APR" --method apr --child-budget "$own" --arithmetic exact
wait
ev "$OUT/solver_sos" --method solver-sos
refs=()  # REF_APR / REF_SOS: other models (e.g. the committed defaults) on the same problems, at the same budget
if [ -n "${REF_APR:-}" ]; then ev "$OUT/ref_apr" --model "$REF_APR" --method apr --child-budget "$own" --label "APR greedy, budget $own, $REF_APR" & refs+=("$OUT/ref_apr"); fi
if [ -n "${REF_SOS:-}" ]; then ev "$OUT/ref_sos" --model "$REF_SOS" --method sos --label "SoS+ greedy, $REF_SOS"; refs+=("$OUT/ref_sos"); fi
wait
solvers=(); for b in $BUDGETS; do solvers+=("$OUT/solver_apr_b$b"); done
apr report "${runs[@]}" "$OUT/sos" "$OUT/apr_b${own}_verified" "$OUT/apr_b${own}_exact" "$OUT/sos_exact" \
  "${refs[@]}" "${solvers[@]}" "$OUT/solver_sos" --out "$REPORT"
