# Shared by profile-nsys.sh and profile-ncu.sh (sourced, after they set TOOLS: the programs they
# need): argument parsing, the tool check, the robo-poet binary, and the NVTX library the ranges
# go through (src/gpu/nvtx.rs).
#   usage: SCRIPT [--bin PATH] [--out DIR] [-- PROFILE-STEP FLAGS...]
# PROFILE-STEP FLAGS default to `--preset seed` (one attention layer: a short kernel list).
BIN="" OUTDIR="" STEP_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    --) shift; STEP_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,/^set /p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done
[ ${#STEP_ARGS[@]} -gt 0 ] || STEP_ARGS=(--preset seed)
for tool in $TOOLS; do
  command -v "$tool" > /dev/null || {
    echo "$tool not found on PATH: $0 needs it (nsys: Nsight Systems, ncu: Nsight Compute; both ship with the CUDA toolkit, e.g. /usr/local/cuda/bin)" >&2
    exit 3
  }
done
HERE_DIR="$(cd "$(dirname "$0")" && pwd)"
if [ -z "$BIN" ]; then
  for b in "$HERE_DIR/bin/robo-poet" "$HERE_DIR/../target/release/robo-poet"; do
    if [ -x "$b" ]; then BIN="$b"; break; fi
  done
  [ -n "$BIN" ] || BIN="$(command -v robo-poet || true)"
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || {
  echo "no robo-poet binary: build it (cargo build --release) or pass --bin PATH" >&2; exit 2; }
OUTDIR="${OUTDIR:-profile-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"

# The NVTX interop library: without it the step still runs, but without named ranges.
if [ -z "${ROBO_POET_NVTX_LIBRARY:-}" ]; then
  for lib in "$HERE_DIR/lib/libnvtx3interop.so.1" /usr/local/cuda/lib64/libnvtx3interop.so.1 \
      $(python3 -c 'import nvidia, os; [print(os.path.join(p, "cu13/lib/libnvtx3interop.so.1")) for p in nvidia.__path__]' 2>/dev/null); do
    if [ -e "$lib" ]; then export ROBO_POET_NVTX_LIBRARY="$lib"; break; fi
  done
fi
echo "robo-poet: $BIN"
echo "nvtx:      ${ROBO_POET_NVTX_LIBRARY:-not found (ranges off; pip install nvidia-nvtx or set ROBO_POET_NVTX_LIBRARY)}"
echo "output:    $OUTDIR"
