#!/usr/bin/env bash
# The GPU check (../shared/docs/GPU.md), run on the GPU machine from the bundle that
# scripts/gpu-bundle.sh builds:   ./run.sh OUT_DIR
# Every step is time-bounded and a failing step does not stop the next. The whole run keeps within
# $GPU_CHECK_BUDGET_S seconds (default 480: the device tool allows 600 per command), in the order
# ../shared/docs/GPU.md gives (correctness first: tests, sanitizers, check; then training, benches,
# the PyTorch peer, profilers); a step that no longer fits is recorded as SKIPPED. OUT_DIR receives only summary.md
# and logs.tar.gz (every log, report and JSON; the device tool returns at most 8 files).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:?usage: run.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOGS="$OUT/logs"
mkdir -p "$LOGS"
cd "$HERE"
BIN="$HERE/bin/robo-poet"
SUMMARY="$OUT/summary.md"
: > "$LOGS/steps.tsv"
cp "$HERE/COMMIT" "$LOGS/COMMIT" 2>/dev/null || true
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET_S:-480}"

# step NAME SECONDS LOG COMMAND...: runs COMMAND with a time limit (cut to what is left of the
# budget), records pass/fail and time.
step() {
  local name="$1" secs="$2" log="$3"; shift 3
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if [ "$left" -lt 20 ]; then
    echo "== $name: SKIPPED (time budget spent)"
    echo "skipped: the run's ${BUDGET}s budget was spent" > "$log"
    printf '%s\t%s\t%s\t%s\n' "$name" "SKIPPED (time budget)" 0 "$(basename "$log")" >> "$LOGS/steps.tsv"
    return
  fi
  [ "$secs" -gt $(( left - 10 )) ] && secs=$(( left - 10 ))
  local t0=$(date +%s.%N)
  echo "== $name (limit ${secs}s) -> $(basename "$log")"
  timeout --kill-after=5 "$secs" "$@" > "$log" 2>&1
  local rc=$?
  local dt=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  local verdict=pass
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMEOUT"
  [ $rc -ne 0 ] && [ "$verdict" = pass ] && verdict="FAIL (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$dt" "$(basename "$log")" >> "$LOGS/steps.tsv"
  tail -n 3 "$log"
}

step "nvidia-smi" 30 "$LOGS/nvidia-smi.txt" nvidia-smi
step "kernel report (ptxas)" 30 "$LOGS/kernels.txt" "$BIN" kernels --check-spills
# The same kernel tests as the emulated ones, on the GPU, and the backend parity tests.
# (the kernel test binaries are the emu_* ones: each test body also runs as a gpu_* test)
step "GPU kernel tests" 150 "$LOGS/gpu_kernels.log" bash -c \
  'rc=0; for t in "$0"/tests/emu_*; do echo "### $(basename "$t")"; "$t" gpu || rc=1; done; exit $rc' "$HERE"
step "GPU backend tests (parity, 100 steps)" 200 "$LOGS/gpu_backend.log" "$HERE/tests/gpu_backend" gpu --test-threads=1 --nocapture
# compute-sanitizer over a small parity run (two steps of each model).
if command -v compute-sanitizer > /dev/null; then
  step "compute-sanitizer memcheck" 150 "$LOGS/memcheck.log" \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$HERE/tests/gpu_backend" gpu_backend_sanitizer_run --test-threads=1
  step "compute-sanitizer racecheck" 200 "$LOGS/racecheck.log" \
    compute-sanitizer --tool racecheck --racecheck-report analysis --error-exitcode 1 "$HERE/tests/gpu_backend" gpu_backend_sanitizer_run --test-threads=1
else
  echo "compute-sanitizer not found" > "$LOGS/memcheck.log"
  printf 'compute-sanitizer\tSKIPPED (not found)\t0\tmemcheck.log\n' >> "$LOGS/steps.tsv"
fi
# The seed's validation suite on the GPU and the CPU (parity of one step included), and the
# memory sweep with the driver-measured bytes beside the analytic ones.
# (JSON on stdout into its own file, notes on stderr into the log; check exits 1 when a line fails.)
step "robo-poet check (seed config, cpu + gpu)" 120 "$LOGS/check.log" \
  bash -c '"$0" check --device cuda --data "$1" --json > "$2"' "$BIN" "$HERE/data" "$LOGS/check.json"
step "memory sweep (driver-measured)" 60 "$LOGS/memory.log" \
  bash -c '"$0" memory --seq-len 64,128,256,512,1024,2048,4096 --json > "$1"' "$BIN" "$LOGS/memory.json"
# Short training runs: the default attention and LSTM presets, GPU and CPU, same seed.
STEPS=150
for model in attention lstm; do
  for dev in cuda cpu; do
    step "train $model on $dev ($STEPS steps)" 150 "$LOGS/train-$model-$dev.log" \
      "$BIN" train --model "$model" --data "$HERE/data" --steps "$STEPS" --eval-every "$STEPS" \
      --device "$dev" --out "$LOGS/runs/$model-$dev" --no-progress
  done
done
# Attention vs LSTM at the same width over seq_len, on the GPU: the training step (criterion).
step "attention_vs_lstm bench (GPU)" 180 "$LOGS/bench_attention_vs_lstm.log" "$HERE/tests/attention_vs_lstm" --bench "train step"
# Per-kernel GFLOP/s and GB/s, CUDA-event timed (matmul, softmax, attention, LSTM cell): ~30 s.
step "kernel bench (GPU)" 90 "$LOGS/bench_kernels.log" "$HERE/tests/kernels" --bench
# One training step of the seed model, timed, with NVTX ranges when the interop library is there;
# then the same step under Nsight Systems and Nsight Compute where the machine has them.
NVTX_LIB="$HERE/lib/libnvtx3interop.so.1"
step "profile-step (seed, cuda)" 45 "$LOGS/profile_step.log" \
  env ROBO_POET_NVTX_LIBRARY="$NVTX_LIB" "$BIN" profile-step --device cuda --preset seed
# The PyTorch peer: same models and shapes, tokens/s and peak memory.
step "PyTorch peer" 150 "$LOGS/peer_pytorch.log" python3 "$HERE/peer_pytorch.py" --json "$LOGS/peer_pytorch.json"
for tool in nsys ncu; do
  if command -v "$tool" > /dev/null; then
    step "profile-$tool (seed step)" 120 "$LOGS/profile_$tool.log" \
      env ROBO_POET_NVTX_LIBRARY="$NVTX_LIB" "$HERE/profile-$tool.sh" --bin "$BIN" --out "$LOGS/$tool" -- --preset seed
  else
    echo "$tool not found on PATH" > "$LOGS/profile_$tool.log"
    printf 'profile-%s\tSKIPPED (not found)\t0\tprofile_%s.log\n' "$tool" "$tool" >> "$LOGS/steps.tsv"
  fi
done

python3 "$HERE/compare_runs.py" "$LOGS" > "$SUMMARY" 2> "$LOGS/compare_runs.err"
{
  echo
  echo "## Steps"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$LOGS/steps.tsv"
} >> "$SUMMARY"
# One archive of the logs (not the profiler reports or checkpoints, which are large).
tar czf "$OUT/logs.tar.gz" -C "$OUT" --exclude='*.nsys-rep' --exclude='*.ncu-rep' --exclude='*.sqlite' \
  --exclude='checkpoint' logs
rm -rf "$LOGS"
echo
cat "$SUMMARY"
echo "(logs: $OUT/logs.tar.gz, $(du -h "$OUT/logs.tar.gz" | cut -f1))"
