#!/usr/bin/env bash
# GPU check of the Triton backend: environment, build, GPU tests, compile gate, profile.
#
#   benchmarks/device_check.sh            on a GPU machine (NVIDIA or ROCm)
#   benchmarks/device_check.sh --tiny     anywhere: Triton's interpreter on CPU, tiny shapes
#   options: --quick (4096x4096 only in the profile), --tune (search the Triton settings first
#            and keep the best in the tuning cache), --no-gate, --no-tests
#
# The timings are `python -m distro_kernels profile --device cuda ...`: one JSON (plus CSV and
# markdown) per device key under $OUTDIR/profiles, to commit under benchmarks/profiles/.
# Results go to stdout and to $OUT (the device tool's output folder) or to
# ${TMPDIR:-/tmp}/distro_device_check. Exit status 0 only if every step passed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TINY=0; QUICK=""; TUNE=""; GATE=1; TESTS=1
for arg in "$@"; do
  case "$arg" in
    --tiny) TINY=1 ;;
    --quick) QUICK="--quick" ;;
    --tune) TUNE="--tune" ;;
    --no-gate) GATE=0 ;;
    --no-tests) TESTS=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
OUTDIR=${OUT:-${TMPDIR:-/tmp}/distro_device_check}
mkdir -p "$OUTDIR"
status=0

echo "== environment"
if [[ $TINY == 1 ]]; then export TRITON_INTERPRET=1; else unset TRITON_INTERPRET; fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
command -v rocm-smi >/dev/null && rocm-smi --showproductname || true
$PY - <<'PY'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| hip", torch.version.hip, "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton; print("triton", triton.__version__)
except Exception as exc:
    sys.exit(f"triton is not importable: {exc} (pip install 'triton==3.9.*')")
PY
if [[ $TINY == 0 ]]; then
  $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible to torch: use --tiny')"
fi

echo "== build"
if ! $PY -c "import distro_kernels" 2>/dev/null; then
  $PY -m pip install --no-build-isolation --no-deps -e . || { echo "build failed"; exit 1; }
fi
$PY - <<'PY'
import distro_kernels, distro_kernels.triton as t
from distro_kernels import backends
print("distro_kernels", distro_kernels.__version__, "| backends", backends.available(),
      "| unavailable", backends.unavailable)
assert t.TRITON_ERROR is None, t.TRITON_ERROR
PY
if [[ $TINY == 0 ]]; then  # compile every kernel for this GPU once (warms Triton's cache)
  start=$(date +%s)
  $PY - <<'PY'
import torch
from distro_kernels.chunking import chunk_plan
from distro_kernels.triton import backend as tb
dev = torch.device("cuda")
for shape in [(128, 128), (64,), (128, 3), (1, 64)]:
    plan = chunk_plan(shape, 64)
    x = torch.randn(shape, device=dev)
    for k in (32, 100000):
        i, v = tb.compress(x, plan, k)
        tb.demo_step_(torch.zeros(shape, device=dev), x, plan, 0.999, 1.0, k)
        tb.decompress([i], [v], plan, "mean", "f32", True)
        tb.decompress([i], [tb.pack_signs(v)], plan, "sum_over_peers", "sign", False)
    tb.idct(tb.dct(x, plan), plan)
    tb.unpack_signs(tb.pack_signs(x), x.numel())
torch.cuda.synchronize()
PY
  echo "kernels compiled for this GPU in $(( $(date +%s) - start )) s"
fi

if [[ $TESTS == 1 ]]; then
  echo "== tests (Triton backend vs reference: bit-identical decode, SPEC 6 encode)"
  $PY -m pytest -q -p no:cacheprovider tests/test_triton_interp.py 2>&1 | tee "$OUTDIR/tests.txt" | tail -25 || status=1
fi

if [[ $GATE == 1 ]]; then
  echo "== compile gate (sm_90, sm_80, gfx942: registers, spills, FMA-free decode)"
  (unset TRITON_INTERPRET; $PY -m distro_kernels.triton.gate) 2>&1 | tee "$OUTDIR/gate.txt" || status=1
fi

echo "== profile (every GPU backend and the eager DeMo-style baseline, same run, same device)"
if [[ $TINY == 1 ]]; then
  $PY -m distro_kernels profile --device cpu --triton-interpreter --backends triton,reference \
    --layout tiny --quick --no-progress --out "$OUTDIR/profiles" 2>&1 | tee "$OUTDIR/profile.txt" || status=1
else
  export DISTRO_KERNELS_CACHE="$OUTDIR/cache"  # --tune's results come back with the profile
  $PY -m distro_kernels profile --device cuda $QUICK $TUNE --csv --markdown --no-progress \
    --out "$OUTDIR/profiles" 2>&1 | tee "$OUTDIR/profile.txt" || status=1
  if [[ -z "$($PY -c 'import torch; print(torch.version.hip or "")')" ]]; then
    echo "== encoder on tensor cores (DISTRO_TRITON_DOT_PRECISION=tf32x3): timings"
    DISTRO_TRITON_DOT_PRECISION=tf32x3 $PY -m distro_kernels profile --device cuda --quick \
      --backends triton --ops encode,compress --no-progress --out "$OUTDIR/profiles-tf32x3" 2>&1 \
      | tee "$OUTDIR/profile-tf32x3.txt" || status=1
  fi
  $PY benchmarks/device_bench.py --accuracy 2>&1 | tee "$OUTDIR/accuracy.txt" || status=1
fi

echo "== done (status $status)"
exit $status
