#!/usr/bin/env bash
# Build FTorch and the esm-emu Fortran land driver against the torch of the active Python, in
# build/ (ignored by git). Cached: a second run rebuilds only what changed (FTorch again only
# when torch, the compiler or the FTorch source changes).
#
#   coupler/fortran/build.sh [--install]
#
#   --install   install gfortran, g++ and netCDF-Fortran with apt-get when missing (root only)
#
# Environment: FTORCH_SRC (default ../shared/vendor/FTorch beside the checkout), FC (default
# gfortran), PYTHON (default python3), ESM_EMU_FORTRAN_BUILD (default build/ in the checkout).
# Prints the driver's path. Exit 3 with the reason when the toolchain is missing and cannot be
# installed here; any other failure names its log.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${ESM_EMU_FORTRAN_BUILD:-$root/build}
src=${FTORCH_SRC:-$root/../shared/vendor/FTorch}
py=${PYTHON:-python3}
fc=${FC:-gfortran}
install=0
[ "${1:-}" = "--install" ] && install=1

missing() {
  local m=""
  command -v "$fc" >/dev/null 2>&1 || m="$m $fc"
  command -v c++ >/dev/null 2>&1 || m="$m c++"
  command -v cmake >/dev/null 2>&1 || m="$m cmake"
  command -v nf-config >/dev/null 2>&1 || pkg-config --exists netcdf-fortran 2>/dev/null || m="$m netCDF-Fortran"
  echo "$m"
}

m=$(missing)
if [ -n "$m" ] && [ $install = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  pkgs="gfortran g++ cmake libnetcdff-dev pkg-config"
  apt-get install -y -q $pkgs >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $pkgs >/dev/null 2>&1; } || true
  m=$(missing)
fi
if [ -n "$m" ]; then
  echo "Fortran toolchain missing:$m (Debian: apt-get install gfortran g++ cmake libnetcdff-dev)" >&2
  exit 3
fi
if [ ! -f "$src/CMakeLists.txt" ]; then
  echo "FTorch source not found at $src (set FTORCH_SRC)" >&2
  exit 3
fi

mkdir -p "$build"
exec 9>"$build/.fortran-build.lock"
flock 9  # one build at a time (parallel test runs, CI)

# torch's version and CMake folder without importing torch (seconds): from its installed metadata
read -r torch_version torch_prefix < <("$py" -c "import importlib.metadata as m, pathlib; \
d = m.distribution('torch'); print(d.version, pathlib.Path(d.locate_file('torch')) / 'share' / 'cmake')")
stamp="torch=$torch_version@$torch_prefix fc=$($fc -dumpfullversion 2>/dev/null || $fc --version | head -1) src=$src"
ft="$build/ftorch"
drv="$build/fortran"

if [ ! -f "$ft/install/lib/cmake/FTorch/FTorchConfig.cmake" ] || [ "$(cat "$ft/stamp" 2>/dev/null)" != "$stamp" ]; then
  rm -rf "$ft" "$drv"
  mkdir -p "$ft"
  log="$ft/build.log"
  if ! { cmake -S "$src" -B "$ft/build" -DCMAKE_Fortran_COMPILER="$fc" -DCMAKE_BUILD_TYPE=Release \
           -DCMAKE_PREFIX_PATH="$torch_prefix" -DCMAKE_INSTALL_PREFIX="$ft/install" \
         && cmake --build "$ft/build" -j "$(nproc 2>/dev/null || echo 2)" \
         && cmake --install "$ft/build"; } >"$log" 2>&1; then
    echo "FTorch build failed; see $log" >&2
    tail -5 "$log" >&2
    exit 1
  fi
  echo "$stamp" >"$ft/stamp"
fi

log="$drv/build.log"
mkdir -p "$drv"
if ! { { [ -f "$drv/CMakeCache.txt" ] || cmake -S "$root/coupler/fortran" -B "$drv" -DCMAKE_Fortran_COMPILER="$fc" \
           -DCMAKE_PREFIX_PATH="$ft/install;$torch_prefix"; } \
       && cmake --build "$drv"; } >"$log" 2>&1; then
  echo "esm-emu Fortran driver build failed; see $log" >&2
  tail -5 "$log" >&2
  exit 1
fi
echo "$drv/esm_emu_land_driver"
