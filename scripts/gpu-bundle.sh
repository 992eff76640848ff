#!/usr/bin/env bash
# Builds the GPU check bundle (../shared/docs/GPU.md): release binary, the GPU test binaries and
# the attention-vs-LSTM and per-kernel benches, with the CUDA kernels compiled by NVRTC 13.0
# (required), stripped, plus the corpus, the run script, the profiling scripts and the NVTX interop
# library (for named ranges under nsys / ncu), into dist/gpu-check/ (git-ignored). On the GPU machine:
#     dist/gpu-check/run.sh OUT_DIR
# Usage: scripts/gpu-bundle.sh [--data DIR]   (DIR: the corpus, default data/, committed)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
DATA="${DATA:-data}"
[ -e "$DATA/alice_wonderland.txt" ] && [ -e "$DATA/hamlet_shakespeare.txt" ] \
  || { echo "no corpus in $DATA: restore the committed one (git checkout -- data) or pass --data DIR" >&2; exit 2; }

# NVRTC 13.0.x is required: the GPU machines' CUDA 13.0 driver rejects newer PTX.
NVRTC_WHEEL=nvidia-cuda-nvrtc==13.0.88
NVRTC_DIR="${NVRTC_DIR:-$PWD/.ci/cache/${NVRTC_WHEEL/==/-}}"
if [ ! -e "$NVRTC_DIR/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$NVRTC_DIR" "$NVRTC_WHEEL"
fi
export LD_LIBRARY_PATH="$NVRTC_DIR/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The NVTX 3 interop library (40 KB) for src/gpu/nvtx.rs; the bundle works without it (no ranges).
NVTX_WHEEL=nvidia-nvtx==13.0.85
NVTX_DIR="${NVTX_DIR:-$PWD/.ci/cache/${NVTX_WHEEL/==/-}}"
if [ ! -e "$NVTX_DIR/nvidia/cu13/lib/libnvtx3interop.so.1" ]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVTX_DIR" "$NVTX_WHEEL" \
    || echo "warning: could not install $NVTX_WHEEL; the bundle will profile without NVTX ranges" >&2
fi
export ROBO_POET_REQUIRE_NVRTC=1

OUT=dist/gpu-check
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/tests" "$OUT/data" "$OUT/lib"

echo "== release binary"
cargo build --release --quiet
cp "${CARGO_TARGET_DIR:-target}/release/robo-poet" "$OUT/bin/"

echo "== test and bench binaries"
cargo test --release --no-run --message-format=json 2>/dev/null > "$OUT/.cargo-tests.json"
cargo bench --no-run --message-format=json 2>/dev/null > "$OUT/.cargo-benches.json"
python3 - "$OUT" <<'PY'
import json, shutil, sys
out = sys.argv[1]
fixed = {"gpu_backend", "attention_vs_lstm", "kernels"}
found = set()
for f in (".cargo-tests.json", ".cargo-benches.json"):
    for line in open(f"{out}/{f}"):
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        name = m["target"]["name"]
        if (name in fixed or name.startswith("emu_")) and m["target"]["kind"] != ["lib"]:
            shutil.copy(m["executable"], f"{out}/tests/{name}")
            found.add(name)
missing = fixed - found
if missing:
    sys.exit(f"not built: {sorted(missing)}")
PY
rm -f "$OUT"/.cargo-*.json
strip "$OUT"/bin/* "$OUT"/tests/*

echo "== corpus, scripts"
cp "$DATA"/alice_wonderland.txt "$DATA"/hamlet_shakespeare.txt "$OUT/data/"
for f in alice_raw.txt hamlet_raw.txt; do [ -e "$DATA/$f" ] && cp "$DATA/$f" "$OUT/data/"; done
cp scripts/gpu/run.sh scripts/gpu/smoke.py scripts/gpu/compare_runs.py scripts/gpu/peer_pytorch.py "$OUT/"
cp scripts/profile-nsys.sh scripts/profile-ncu.sh scripts/profile-common.sh scripts/ncu_summary.py "$OUT/"
cp "$NVTX_DIR/nvidia/cu13/lib/libnvtx3interop.so.1" "$OUT/lib/" 2>/dev/null || true
chmod +x "$OUT/run.sh" "$OUT"/profile-*.sh
git rev-parse --short HEAD > "$OUT/COMMIT" 2>/dev/null || true
du -sh "$OUT"
# The device tool carries at most 64 MiB.
size=$(du -sb "$OUT" | cut -f1)
if [ "$size" -ge $(( 64 * 1024 * 1024 )) ]; then
  echo "the bundle is $size bytes: over the 64 MiB the device tool carries" >&2
  exit 1
fi
"$OUT/bin/robo-poet" kernels --check-spills > /dev/null
echo "bundle ready: $OUT (send it; run: $OUT/run.sh OUT_DIR)"
