#!/usr/bin/env bash
# Build KenLM's `lmplz` (ARPA n-gram estimation) and `build_binary` (ARPA -> binary) from the kenlm source
# distribution on PyPI, and install both into a bin folder. The Docker image's builder stage, `make kenlm`
# and CI (scripts/ci_docker.sh) all run this script.
#
#   scripts/build_kenlm.sh [--wheel-dir DIR] [PREFIX]
#
#   PREFIX            where lmplz and build_binary go (default: tools/kenlm/bin under the repository root;
#                     tools/ is git-ignored). Use them with PATH="PREFIX:$PATH".
#   --wheel-dir DIR   also build the kenlm Python module as a wheel into DIR, from the same sdist (what the
#                     Docker image and CI install with scripts/install.sh --find-links DIR).
#
# Environment: PYTHON (default python3; its pip downloads the sdist and builds the wheel), KENLM_VERSION
# (default 0.3.0), JOBS (default: nproc), KENLM_STATIC (default 1: static executables, so they run in an
# image that has no Boost; 0 links Boost and the compression libraries dynamically).
#
# Idempotent: binaries that already exist in PREFIX and run are kept; a wheel already in DIR is kept.
# As root, missing Debian/Ubuntu build packages are installed with apt-get; as another user the script
# says which are missing and tries the build anyway.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
KENLM_VERSION="${KENLM_VERSION:-0.3.0}"
JOBS="${JOBS:-$(nproc)}"
KENLM_STATIC="${KENLM_STATIC:-1}"
BUILD_PACKAGES=(g++ make cmake libboost-program-options-dev libboost-system-dev libboost-thread-dev
                libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev)

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

wheel_dir=""
prefix=""
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel-dir) [ $# -ge 2 ] || { echo "error: --wheel-dir needs a folder" >&2; exit 2; }
                 wheel_dir="$2"; shift 2 ;;
    --wheel-dir=*) wheel_dir="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $1 (valid: --wheel-dir DIR, --help)" >&2; exit 2 ;;
    *) [ -z "$prefix" ] || { echo "error: one PREFIX only, got '$prefix' and '$1'" >&2; exit 2; }
       prefix="$1"; shift ;;
  esac
done
prefix="${prefix:-$ROOT/tools/kenlm/bin}"

say() { echo "build_kenlm: $*"; }

# lmplz --help prints its options and exits 1 (as does build_binary with no arguments), so "runs" means:
# the executable loads (no missing shared library) and prints its usage text.
binaries_work() {
  [ -x "$prefix/lmplz" ] && [ -x "$prefix/build_binary" ] || return 1
  local usage
  usage="$("$prefix/lmplz" --help 2>&1 || true)"
  [[ "$usage" == *--order* ]] || return 1
  usage="$("$prefix/build_binary" 2>&1 || true)"
  [[ "$usage" == *ARPA* ]] || return 1
}

wheel_present() {
  [ -n "$wheel_dir" ] || return 0
  local tag
  tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
  compgen -G "$wheel_dir/kenlm-$KENLM_VERSION-$tag-*.whl" >/dev/null
}

missing_packages() {
  command -v dpkg-query >/dev/null || return 0  # not Debian/Ubuntu: nothing we can check or install
  local p
  for p in "${BUILD_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

install_build_packages() {
  local missing
  mapfile -t missing < <(missing_packages)
  [ "${#missing[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    say "not root, so not installing the missing build packages: ${missing[*]}"
    say "install them with: sudo apt-get install --no-install-recommends ${missing[*]}  (trying the build anyway)"
    return 0
  fi
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start=$SECONDS
need_bins=1
binaries_work && need_bins=0
if [ "$need_bins" = 0 ] && wheel_present; then
  say "lmplz and build_binary already built and working in $prefix; nothing to do"
  echo "lmplz:        $prefix/lmplz"
  echo "build_binary: $prefix/build_binary"
  exit 0
fi

install_build_packages

work="$(mktemp -d "${TMPDIR:-/tmp}/kenlm-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT

say "downloading the kenlm $KENLM_VERSION source distribution with pip"
# --no-binary kenlm (not :all:): only kenlm comes as source; its build requirements (setuptools, wheel, cmake)
# that pip installs to read the sdist's metadata come as wheels instead of being compiled too.
"$PYTHON" -m pip download -q --no-deps --no-binary kenlm "kenlm==$KENLM_VERSION" -d "$work"
sdist="$work/kenlm-$KENLM_VERSION.tar.gz"
[ -f "$sdist" ] || { echo "error: pip did not save $sdist (saw: $(ls "$work"))" >&2; exit 1; }

if [ "$need_bins" = 1 ]; then
  tar -xzf "$sdist" -C "$work"
  src="$work/kenlm-$KENLM_VERSION"
  static=OFF
  [ "$KENLM_STATIC" = 1 ] && static=ON
  say "building lmplz and build_binary (Release, FORCE_STATIC=$static, $JOBS jobs)"
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DFORCE_STATIC="$static" >"$work/cmake.log" 2>&1 \
    || { cat "$work/cmake.log" >&2; echo "error: cmake configure failed (missing packages? see above)" >&2; exit 1; }
  cmake --build "$work/build" --target lmplz build_binary --parallel "$JOBS" >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; echo "error: building lmplz/build_binary failed" >&2; exit 1; }
  mkdir -p "$prefix"
  install -s -m 0755 "$work/build/bin/lmplz" "$work/build/bin/build_binary" "$prefix/"
  binaries_work || { echo "error: the installed binaries in $prefix do not run" >&2; exit 1; }
  say "lmplz and build_binary built in $((SECONDS - start)) s"
fi

if ! wheel_present; then
  say "building the kenlm $KENLM_VERSION Python wheel into $wheel_dir"
  mkdir -p "$wheel_dir"
  wheel_start=$SECONDS
  "$PYTHON" -m pip wheel -q --no-deps --no-binary kenlm -w "$wheel_dir" "$sdist"
  say "kenlm wheel built in $((SECONDS - wheel_start)) s"
fi

say "done in $((SECONDS - start)) s"
echo "lmplz:        $prefix/lmplz"
echo "build_binary: $prefix/build_binary"
[ -z "$wheel_dir" ] || echo "kenlm wheel:  $(ls "$wheel_dir"/kenlm-"$KENLM_VERSION"-*.whl)"
