#!/usr/bin/env bash
# Nsight Compute metrics of every kernel of one training step: `robo-poet profile-step --device
# cuda` under `ncu --profile-from-start off` (only the step between cuProfilerStart and
# cuProfilerStop), at the GPU's own clocks (--clock-control none), then a per-kernel table:
# duration, achieved DRAM bandwidth, registers per thread, achieved occupancy.
#   usage: scripts/profile-ncu.sh [--bin PATH] [--out DIR] [-- PROFILE-STEP FLAGS...]
#   e.g.   scripts/profile-ncu.sh --out prof -- --preset seed --batch 8
# Writes DIR/step.ncu-rep, DIR/step.log, DIR/ncu.csv (ncu --page raw) and DIR/kernels.md.
# ncu replays each kernel once per metric pass, so the step runs far slower than unprofiled; at
# most NCU_LAUNCH_COUNT (default 400) launches are profiled.
set -euo pipefail
TOOLS="ncu python3"
. "$(dirname "$0")/profile-common.sh"
SUMMARY="$HERE_DIR/ncu_summary.py"
[ -e "$SUMMARY" ] || { echo "$SUMMARY is missing (it sits beside this script)" >&2; exit 2; }
METRICS="gpu__time_duration.sum,dram__bytes.sum.per_second,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active"

ncu --clock-control none --profile-from-start off --launch-count "${NCU_LAUNCH_COUNT:-400}" \
  --metrics "$METRICS" --force-overwrite --export "$OUTDIR/step" \
  "$BIN" profile-step --device cuda "${STEP_ARGS[@]}" 2>&1 | tee "$OUTDIR/step.log"
[ -e "$OUTDIR/step.ncu-rep" ] || { echo "ncu wrote no report (see $OUTDIR/step.log)" >&2; exit 1; }
ncu --import "$OUTDIR/step.ncu-rep" --csv --page raw > "$OUTDIR/ncu.csv"
python3 "$SUMMARY" "$OUTDIR/ncu.csv" --out "$OUTDIR/kernels.md"
