#!/usr/bin/env bash
# The GPU check (../shared/docs/GPU.md), run on the GPU machine from the bundle that
# scripts/gpu-bundle.sh builds:   ./run.sh OUT_DIR
#
# One command, at most $GPU_CHECK_BUDGET_S seconds (default 480; the device tool allows 600 per
# command), every step time-bounded by its cap (cut to what is left of the budget) and a failing
# step never stopping the next. The steps come in order of value per second, so a run cut short
# still answers the questions that matter most:
#   1. smoke:      20 steps of the seed, default GPT and default LSTM on the GPU and on the CPU,
#                  same seed: do the losses agree, and the tokens/s of each;
#   2. parity:     the GPU kernel tests (one test at a time: a sticky device fault must not fail
#                  every test in flight) and the GPU backend tests (100-step parity, determinism);
#   3. speed:      the attention-vs-LSTM bench, the kernel bench, profile-step, the PyTorch peer;
#   4. accounting: the driver-measured memory sweep and `robo-poet check` on the GPU;
#   5. sanitizers: compute-sanitizer memcheck and racecheck over a 2-step run.
# The caps add up to less than the budget (tests/gpu_check_plan.rs checks it in CI).
#
# GPU_CHECK_DRY=1: a dry run. Every step is replaced by a sleep of its cap on a simulated clock
# (GPU_CHECK_DRY_SLEEP=1 sleeps for real), so the plan, its order and its fit in the budget can be
# checked on a machine without a GPU; the summary and the archive are written as in a real run.
#
# OUT_DIR receives only summary.md and logs.tar.gz (the device tool returns at most 8 files).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:?usage: run.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
cd "$HERE"
BIN="$HERE/bin/robo-poet"
TESTS="$HERE/tests"
DATA="$HERE/data"
SUMMARY="$OUT/summary.md"
: > "$LOGS/steps.tsv"
cp "$HERE/COMMIT" "$LOGS/COMMIT" 2>/dev/null || true
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
DRY="${GPU_CHECK_DRY:-0}"
# Seconds kept for the summary and the archive at the end.
RESERVE=8
START=$(date +%s)
SIMULATED=0

now() {
  if [ "$DRY" = 1 ] && [ "${GPU_CHECK_DRY_SLEEP:-0}" != 1 ]; then
    echo $(( START + SIMULATED ))
  else
    date +%s
  fi
}

# step PHASE NAME CAP LOG COMMAND...: runs COMMAND for at most CAP seconds (cut to what is left of
# the budget); records phase, name, verdict, seconds, cap and log in steps.tsv.
step() {
  local phase="$1" name="$2" cap="$3" log="$4"; shift 4
  local left=$(( BUDGET - RESERVE - ($(now) - START) ))
  if [ "$left" -lt 5 ]; then
    echo "== $name: SKIPPED (time budget spent)"
    echo "skipped: the run's ${BUDGET}s budget was spent" > "$log"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$name" "SKIPPED (time budget)" 0 "$cap" "$(basename "$log")" >> "$LOGS/steps.tsv"
    return
  fi
  local secs="$cap"
  [ "$secs" -gt "$left" ] && secs="$left"
  echo "== [$phase] $name (limit ${secs}s) -> $(basename "$log")"
  if [ "$DRY" = 1 ]; then
    printf 'dry run: would run for at most %ss:' "$secs" > "$log"
    printf ' %q' "$@" >> "$log"
    echo >> "$log"
    if [ "${GPU_CHECK_DRY_SLEEP:-0}" = 1 ]; then sleep "$secs"; else SIMULATED=$(( SIMULATED + secs )); fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$name" "dry run" "$secs" "$cap" "$(basename "$log")" >> "$LOGS/steps.tsv"
    return
  fi
  local t0; t0=$(date +%s.%N)
  timeout --kill-after=5 "$secs" "$@" > "$log" 2>&1
  local rc=$?
  local dt; dt=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  local verdict=pass
  { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && verdict="TIMEOUT"
  [ $rc -ne 0 ] && [ "$verdict" = pass ] && verdict="FAIL (exit $rc)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$phase" "$name" "$verdict" "$dt" "$cap" "$(basename "$log")" >> "$LOGS/steps.tsv"
  tail -n 3 "$log"
}

# Runs every emu_* test binary's GPU twin (`gpu` filter), one test at a time.
gpu_kernel_tests() {
  local rc=0
  for t in "$TESTS"/emu_*; do
    echo "### $(basename "$t")"
    "$t" gpu --test-threads=1 || rc=1
  done
  return $rc
}

NVTX_LIB="$HERE/lib/libnvtx3interop.so.1"
SAN_RUN=("$TESTS/gpu_backend" gpu_backend_sanitizer_run --test-threads=1)

step setup "nvidia-smi, kernel report" 10 "$LOGS/setup.txt" \
  bash -c 'nvidia-smi; echo; nvidia-smi -q -d CLOCK,POWER | head -n 60; echo; "$0" kernels --check-spills' "$BIN"
cp "$LOGS/setup.txt" "$LOGS/nvidia-smi.txt" 2>/dev/null || true

# 1. smoke: the first answers (do the GPU and CPU agree; how fast is each).
step smoke "smoke: 20 steps per model, GPU vs CPU" 55 "$LOGS/smoke.log" \
  python3 "$HERE/smoke.py" --bin "$BIN" --data "$DATA" --logs "$LOGS" --steps 20

# 2. parity
step parity "GPU kernel tests (one at a time)" 40 "$LOGS/gpu_kernels.log" gpu_kernel_tests
step parity "GPU backend tests (100-step parity)" 55 "$LOGS/gpu_backend.log" \
  "$TESTS/gpu_backend" gpu --test-threads=1 --nocapture

# 3. speed
step speed "attention_vs_lstm bench (train step)" 40 "$LOGS/bench_attention_vs_lstm.log" \
  env ROBO_POET_BENCH_QUICK=1 "$TESTS/attention_vs_lstm" --bench "train step"
step speed "kernel bench (+ fused vs materialized attention, T 128..4096)" 35 "$LOGS/bench_kernels.log" \
  env ROBO_POET_BENCH_QUICK=1 "$TESTS/kernels" --bench
step speed "profile-step (seed, default GPT at fp32/tf32/bf16, LSTM persistent and per timestep)" 17 "$LOGS/profile_step.log" \
  env ROBO_POET_NVTX_LIBRARY="$NVTX_LIB" bash -c \
  'for m in "--preset seed" "" "--precision tf32" "--precision bf16" "--model lstm" "--model lstm --lstm-recurrence per-timestep"; do "$0" profile-step --device cuda $m || exit 1; done' "$BIN"
step speed "PyTorch peer (eager, TF32, torch.compile; SDPA)" 100 "$LOGS/peer_pytorch.log" \
  python3 "$HERE/peer_pytorch.py" --json "$LOGS/peer_pytorch.json" --deadline-s 75 --per-measurement-s 30

# 4. accounting: the memory sweep with driver-measured bytes; the seed's validations on the GPU.
# (JSON on stdout into its own file, notes on stderr into the log; check exits 1 when a line fails.)
step accounting "memory sweep (driver-measured)" 10 "$LOGS/memory.log" \
  bash -c '"$0" memory --seq-len 64,128,256,512,1024,2048,4096 --json > "$1"' "$BIN" "$LOGS/memory.json"
step accounting "robo-poet check (seed config, cpu + gpu)" 20 "$LOGS/check.log" \
  bash -c '"$0" check --device cuda --data "$1" --json > "$2"' "$BIN" "$DATA" "$LOGS/check.json"

# 5. sanitizers, last: slow, and a racecheck that runs long must not cost the speed figures.
if [ "$DRY" = 1 ] || command -v compute-sanitizer > /dev/null; then
  step sanitizers "compute-sanitizer memcheck (2 steps)" 45 "$LOGS/memcheck.log" \
    compute-sanitizer --tool memcheck --error-exitcode 1 "${SAN_RUN[@]}"
  step sanitizers "compute-sanitizer racecheck (2 steps)" 45 "$LOGS/racecheck.log" \
    compute-sanitizer --tool racecheck --racecheck-report analysis --error-exitcode 1 "${SAN_RUN[@]}"
else
  echo "compute-sanitizer not found" > "$LOGS/memcheck.log"
  printf 'sanitizers\tcompute-sanitizer\tSKIPPED (not found)\t0\t0\tmemcheck.log\n' >> "$LOGS/steps.tsv"
fi

# 6. extras: only when the budget was raised for them (GPU_CHECK_BUDGET_S); never in the 480 s plan.
step_if_room() {
  local left=$(( BUDGET - RESERVE - ($(now) - START) ))
  if [ "$left" -lt "$3" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "SKIPPED (needs ${3}s; raise GPU_CHECK_BUDGET_S)" 0 "$3" "$(basename "$4")" >> "$LOGS/steps.tsv"
    return
  fi
  step "$@"
}
if [ "$DRY" = 1 ] || command -v ncu > /dev/null; then
  step_if_room extras "profile-ncu (seed step)" 90 "$LOGS/profile_ncu.log" \
    env ROBO_POET_NVTX_LIBRARY="$NVTX_LIB" "$HERE/profile-ncu.sh" --bin "$BIN" --out "$LOGS/ncu" -- --preset seed
fi

python3 "$HERE/compare_runs.py" "$LOGS" > "$SUMMARY" 2> "$LOGS/compare_runs.err"
{
  echo
  echo "## Steps"
  echo
  [ "$DRY" = 1 ] && echo "DRY RUN (GPU_CHECK_DRY=1): nothing ran; seconds are the caps, on a simulated clock." && echo
  echo "| phase | step | result | seconds | cap | log |"
  echo "|---|---|---|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }' "$LOGS/steps.tsv"
  echo
  echo "total: $(( $(now) - START )) s of a ${BUDGET} s budget"
} >> "$SUMMARY"
# One archive of the logs (not the profiler reports or checkpoints, which are large).
tar czf "$OUT/logs.tar.gz" -C "$OUT" --exclude='*.nsys-rep' --exclude='*.ncu-rep' --exclude='*.sqlite' \
  --exclude='checkpoint' --exclude='checkpoint.*' logs
rm -rf "$LOGS"
echo
cat "$SUMMARY"
echo "(logs: $OUT/logs.tar.gz, $(du -h "$OUT/logs.tar.gz" | cut -f1))"
