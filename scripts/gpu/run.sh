#!/usr/bin/env bash
# The GPU check (../shared/docs/GPU.md), run on the GPU machine from the bundle that
# scripts/gpu-bundle.sh builds:   ./run.sh OUT_DIR
# Every step is time-bounded and a failing step does not stop the next; everything lands in
# OUT_DIR (logs + summary.md), and the short summary table is printed last. About 8 minutes.
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT="${1:?usage: run.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$HERE"
BIN="$HERE/bin/robo-poet"
SUMMARY="$OUT/summary.md"
: > "$OUT/steps.tsv"
cp "$HERE/COMMIT" "$OUT/COMMIT" 2>/dev/null || true

# step NAME SECONDS LOG COMMAND...: runs COMMAND with a time limit, records pass/fail and time.
step() {
  local name="$1" secs="$2" log="$3"; shift 3
  local t0=$(date +%s.%N)
  echo "== $name (limit ${secs}s) -> $(basename "$log")"
  timeout --kill-after=10 "$secs" "$@" > "$log" 2>&1
  local rc=$?
  local dt=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
  local verdict=pass
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="TIMEOUT"
  [ $rc -ne 0 ] && [ "$verdict" = pass ] && verdict="FAIL (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$verdict" "$dt" "$(basename "$log")" >> "$OUT/steps.tsv"
  tail -n 3 "$log"
}

step "nvidia-smi" 30 "$OUT/nvidia-smi.txt" nvidia-smi
step "kernel report (ptxas)" 30 "$OUT/kernels.txt" "$BIN" kernels --check-spills
# The same kernel tests as the emulated ones, on the GPU, and the backend parity tests.
# (the kernel test binaries are the emu_* ones: each test body also runs as a gpu_* test)
step "GPU kernel tests" 150 "$OUT/gpu_kernels.log" bash -c \
  'rc=0; for t in "$0"/tests/emu_*; do echo "### $(basename "$t")"; "$t" gpu || rc=1; done; exit $rc' "$HERE"
step "GPU backend tests (parity, 100 steps)" 200 "$OUT/gpu_backend.log" "$HERE/tests/gpu_backend" gpu --test-threads=1 --nocapture
# compute-sanitizer over a small parity run (two steps of each model).
if command -v compute-sanitizer > /dev/null; then
  step "compute-sanitizer memcheck" 150 "$OUT/memcheck.log" \
    compute-sanitizer --tool memcheck --error-exitcode 1 "$HERE/tests/gpu_backend" gpu_backend_sanitizer_run --test-threads=1
  step "compute-sanitizer racecheck" 200 "$OUT/racecheck.log" \
    compute-sanitizer --tool racecheck --racecheck-report analysis --error-exitcode 1 "$HERE/tests/gpu_backend" gpu_backend_sanitizer_run --test-threads=1
else
  echo "compute-sanitizer not found" > "$OUT/memcheck.log"
  printf 'compute-sanitizer\tSKIPPED (not found)\t0\tmemcheck.log\n' >> "$OUT/steps.tsv"
fi
# Short training runs: the default attention and LSTM presets, GPU and CPU, same seed.
STEPS=150
for model in attention lstm; do
  for dev in cuda cpu; do
    step "train $model on $dev ($STEPS steps)" 150 "$OUT/train-$model-$dev.log" \
      "$BIN" train --model "$model" --data "$HERE/data" --steps "$STEPS" --eval-every "$STEPS" \
      --device "$dev" --out "$OUT/runs/$model-$dev" --no-progress
  done
done
# The PyTorch peer: same models and shapes, tokens/s and peak memory.
step "PyTorch peer" 150 "$OUT/peer_pytorch.log" python3 "$HERE/peer_pytorch.py" --json "$OUT/peer_pytorch.json"
# Attention vs LSTM at the same width over seq_len, on the GPU: the training step (criterion).
step "attention_vs_lstm bench (GPU)" 180 "$OUT/bench_attention_vs_lstm.log" "$HERE/tests/attention_vs_lstm" --bench "train step"
# Per-kernel GFLOP/s and GB/s, CUDA-event timed (matmul, softmax, attention, LSTM cell): ~30 s.
step "kernel bench (GPU)" 90 "$OUT/bench_kernels.log" "$HERE/tests/kernels" --bench
# One training step of the seed model, timed, with NVTX ranges when the interop library is there;
# then the same step under Nsight Systems and Nsight Compute where the machine has them.
NVTX_LIB="$HERE/lib/libnvtx3interop.so.1"
step "profile-step (seed, cuda)" 45 "$OUT/profile_step.log" \
  env ROBO_POET_NVTX_LIBRARY="$NVTX_LIB" "$BIN" profile-step --device cuda --preset seed
for tool in nsys ncu; do
  if command -v "$tool" > /dev/null; then
    step "profile-$tool (seed step)" 120 "$OUT/profile_$tool.log" \
      env ROBO_POET_NVTX_LIBRARY="$NVTX_LIB" "$HERE/profile-$tool.sh" --bin "$BIN" --out "$OUT/$tool" -- --preset seed
  else
    echo "$tool not found on PATH" > "$OUT/profile_$tool.log"
    printf 'profile-%s\tSKIPPED (not found)\t0\tprofile_%s.log\n' "$tool" "$tool" >> "$OUT/steps.tsv"
  fi
done

python3 "$HERE/compare_runs.py" "$OUT" > "$SUMMARY" 2> "$OUT/compare_runs.err"
{
  echo
  echo "## Steps"
  echo
  echo "| step | result | seconds | log |"
  echo "|---|---|---|---|"
  awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$OUT/steps.tsv"
} >> "$SUMMARY"
echo
cat "$SUMMARY"
