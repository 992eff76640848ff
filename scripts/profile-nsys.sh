#!/usr/bin/env bash
# Nsight Systems timeline of one training step: `robo-poet profile-step --device cuda` under
# `nsys profile` with CUDA and NVTX tracing, recording only the step between cuProfilerStart and
# cuProfilerStop, then `nsys stats`: per-kernel time (cuda_gpu_kern_sum) and per-range time
# (nvtx_sum: forward, backward, optimizer, each layer, each kernel launch).
#   usage: scripts/profile-nsys.sh [--bin PATH] [--out DIR] [-- PROFILE-STEP FLAGS...]
#   e.g.   scripts/profile-nsys.sh --out prof -- --model lstm --batch 64
# Writes DIR/step.nsys-rep, DIR/step.log (the step's own output), DIR/kernels.txt, DIR/nvtx.txt.
set -euo pipefail
TOOLS="nsys"
. "$(dirname "$0")/profile-common.sh"

nsys profile --trace=cuda,nvtx --sample=none --cpuctxsw=none \
  --capture-range=cudaProfilerApi --capture-range-end=stop \
  --force-overwrite=true --output="$OUTDIR/step" \
  "$BIN" profile-step --device cuda "${STEP_ARGS[@]}" 2>&1 | tee "$OUTDIR/step.log"
[ -e "$OUTDIR/step.nsys-rep" ] || { echo "nsys wrote no report (see $OUTDIR/step.log)" >&2; exit 1; }
rc=0
nsys stats --force-export=true --report cuda_gpu_kern_sum --format column "$OUTDIR/step.nsys-rep" \
  > "$OUTDIR/kernels.txt" 2>&1 || rc=1
nsys stats --report nvtx_sum --format column "$OUTDIR/step.nsys-rep" > "$OUTDIR/nvtx.txt" 2>&1 || rc=1
cat "$OUTDIR/kernels.txt" "$OUTDIR/nvtx.txt"
[ $rc -eq 0 ] || echo "nsys stats failed (the report itself is in $OUTDIR/step.nsys-rep: open it in the Nsight Systems GUI)" >&2
exit $rc
