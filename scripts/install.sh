#!/usr/bin/env bash
# Install asrkit from this repository into a Python environment: THE install steps that the Docker image
# (docker/Dockerfile) and CI (scripts/ci_docker.sh) both run.
#
#   scripts/install.sh [--extras LIST] [--find-links DIR] [--ffmpeg] [--no-system-deps] [--editable]
#
#   --extras LIST      optional dependency groups of pyproject.toml, comma-separated (default: lm, i.e. kenlm and
#                      pyctcdecode); --extras '' installs asrkit alone
#   --find-links DIR   also look for wheels in DIR, e.g. the kenlm wheel from scripts/build_kenlm.sh --wheel-dir
#                      (without it, pip compiles the kenlm module from source: a C++ compiler is needed, ~2 min)
#   --ffmpeg           also install Debian's ffmpeg (the Docker image does; it is large)
#   --no-system-deps   do not check or install Debian packages
#   --editable         pip install -e (for development)
#
# Environment: PYTHON, the interpreter whose environment receives asrkit (default: python3).
#
# System packages (libsndfile1, and ffmpeg with --ffmpeg) are installed with apt-get only when running as
# root and missing; otherwise the script says what is missing and goes on (the soundfile wheel bundles its
# own libsndfile, so asrkit still reads audio).
#
# A torch that is already installed (the CUDA build in the pytorch/pytorch base image) is kept: see
# write_constraints below. The script checks afterwards that torch is the same one as before.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,23p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

extras="lm"
find_links=""
with_ffmpeg=0
system_deps=1
editable=0
while [ $# -gt 0 ]; do
  case "$1" in
    --extras) [ $# -ge 2 ] || { echo "error: --extras needs a value (e.g. lm, or '')" >&2; exit 2; }
              extras="$2"; shift 2 ;;
    --extras=*) extras="${1#*=}"; shift ;;
    --find-links) [ $# -ge 2 ] || { echo "error: --find-links needs a folder" >&2; exit 2; }
                  find_links="$2"; shift 2 ;;
    --find-links=*) find_links="${1#*=}"; shift ;;
    --ffmpeg) with_ffmpeg=1; shift ;;
    --no-system-deps) system_deps=0; shift ;;
    --editable) editable=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (valid: --extras LIST, --find-links DIR, --ffmpeg, --no-system-deps," \
            "--editable, --help)" >&2; exit 2 ;;
  esac
done

say() { echo "install: $*"; }

command -v "$PYTHON" >/dev/null || { echo "error: PYTHON=$PYTHON not found" >&2; exit 2; }
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "error: asrkit needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1)" >&2; exit 2; }
if [ -n "$find_links" ] && [ ! -d "$find_links" ]; then
  echo "error: --find-links $find_links is not a folder" >&2; exit 2
fi

# --- 1. Debian packages needed at run time ------------------------------------------------------------------
install_system_deps() {
  local wanted=(libsndfile1) missing=() p
  [ "$with_ffmpeg" = 1 ] && wanted+=(ffmpeg)
  if ! command -v dpkg-query >/dev/null; then
    say "no dpkg here; make sure these are installed: ${wanted[*]}"
    return 0
  fi
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || { say "system packages present: ${wanted[*]}"; return 0; }
  if [ "$(id -u)" != 0 ]; then
    say "not root, so not installing: ${missing[*]} (sudo apt-get install --no-install-recommends ${missing[*]})"
    return 0
  fi
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
[ "$system_deps" = 1 ] && install_system_deps

# --- 2. Constraints: the repository's pins, except for a torch that is already there -----------------------
# Why a constraints file and not --no-deps: --no-deps would skip every dependency of asrkit and pyctcdecode
# (typer, soundfile, sentencepiece, ...), so the script would need a second, hand-kept list of them. Instead
# pip resolves everything as usual, and we only change the pins for torch and torchaudio: where they are
# already installed, they are pinned to exactly the installed versions (e.g. 2.9.1+cu128 in the pytorch base
# image), so pip finds `torch>=2.4` satisfied and installs no second torch. Pinning matters: constraints.txt
# pins the CPU/dev versions (torch==2.14.1), which would otherwise make pip replace the image's CUDA build.
installed_version() {  # prints the installed version of a distribution in PYTHON's environment, or nothing
  "$PYTHON" - "$1" <<'EOF'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
}

torch_where() {  # version and location of the torch that PYTHON imports, or "none"
  "$PYTHON" -c 'import torch, os; print(torch.__version__, os.path.dirname(torch.__file__))' 2>/dev/null \
    || echo none
}

work="$(mktemp -d "${TMPDIR:-/tmp}/asrkit-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
constraints="$work/constraints.txt"

write_constraints() {
  local torch_v audio_v
  torch_v="$(installed_version torch)"
  audio_v="$(installed_version torchaudio)"
  if [ -z "$torch_v" ]; then
    say "no torch installed yet: using the repository's pins (constraints.txt)"
    cp "$ROOT/constraints.txt" "$constraints"
    return 0
  fi
  if [ -z "$audio_v" ]; then
    echo "error: torch $torch_v is installed in $PYTHON's environment but torchaudio is not. Install the" \
         "torchaudio build that matches it (same version and CUDA variant, from the index torch came from)" \
         "and rerun; letting pip pick one could fetch a build that does not load with this torch." >&2
    exit 1
  fi
  say "keeping the installed torch $torch_v and torchaudio $audio_v (pinned for pip)"
  grep -v -E '^[[:space:]]*(torch|torchaudio)[[:space:]]*([=<>!~;[]|$)' "$ROOT/constraints.txt" >"$constraints" || true
  printf 'torch==%s\ntorchaudio==%s\n' "$torch_v" "$audio_v" >>"$constraints"
}
write_constraints

# --- 3. asrkit and its extras ------------------------------------------------------------------------------
spec="$ROOT"
[ -n "$extras" ] && spec="${ROOT}[${extras}]"
pip_args=(install -c "$constraints")
[ -n "$find_links" ] && pip_args+=(--find-links "$find_links")
if [ "$editable" = 1 ]; then pip_args+=(-e "$spec"); else pip_args+=("$spec"); fi

torch_before="$(torch_where)"
had_build_dir=0
[ -e "$ROOT/build" ] && had_build_dir=1
say "$PYTHON -m pip ${pip_args[*]}"
"$PYTHON" -m pip "${pip_args[@]}"
# setuptools builds in the source tree; leave no build/ behind in a checkout that had none.
[ "$had_build_dir" = 1 ] || rm -rf "$ROOT/build"

# --- 4. Check what was installed ---------------------------------------------------------------------------
torch_after="$(torch_where)"
if [ "$torch_before" != none ] && [ "$torch_before" != "$torch_after" ]; then
  echo "error: pip replaced torch: before '$torch_before', after '$torch_after'" >&2
  exit 1
fi
imports="import asrkit, torch, torchaudio, soundfile"
case ",$extras," in *,lm,*) imports="$imports, kenlm, pyctcdecode" ;; esac
"$PYTHON" -c "$imports" \
  || { echo "error: installed, but '$imports' fails in $PYTHON's environment" >&2; exit 1; }
"$PYTHON" -m asrkit --help >/dev/null || { echo "error: 'python -m asrkit --help' fails" >&2; exit 1; }

# With the lm extra and KenLM's tools on PATH: a 2-gram LM from three lines (lmplz), binarised (build_binary),
# loaded by the kenlm module and used by a pyctcdecode beam search on hand-made emissions.
check_lm() {
  if ! command -v lmplz >/dev/null || ! command -v build_binary >/dev/null; then
    say "lmplz / build_binary not on PATH: skipping the KenLM check (scripts/build_kenlm.sh builds them)"
    return 0
  fi
  local d="$work/lm"
  mkdir -p "$d"
  printf 'bugs bunny\nbugs bunny is a rabbit\nthe rabbit says bunny\n' >"$d/text.txt"
  lmplz -o 2 --discount_fallback -S 100M -T "$d" <"$d/text.txt" >"$d/lm.arpa" 2>"$d/lmplz.log" \
    || { cat "$d/lmplz.log" >&2; echo "error: lmplz ($(command -v lmplz)) failed" >&2; exit 1; }
  build_binary "$d/lm.arpa" "$d/lm.bin" >"$d/build_binary.log" 2>&1 \
    || { cat "$d/build_binary.log" >&2; echo "error: build_binary ($(command -v build_binary)) failed" >&2; exit 1; }
  "$PYTHON" - "$d/lm.bin" <<'PY' || { echo "error: kenlm / pyctcdecode could not decode with the LM" >&2; exit 1; }
import logging
import sys

import kenlm
import numpy as np
from pyctcdecode import build_ctcdecoder

logging.disable(logging.WARNING)  # pyctcdecode warns that a binary LM carries no unigram list
lm = kenlm.Model(sys.argv[1])
assert lm.order == 2, lm.order
labels = ["", " ", "b", "u", "g", "s", "n", "y"]
ids = []
for c in "bugs bunny":  # a blank between repeated letters, as CTC needs
    ids += [0, labels.index(c)] if ids and ids[-1] == labels.index(c) else [labels.index(c)]
emissions = np.full((len(ids), len(labels)), np.log(0.01), dtype=np.float32)
emissions[np.arange(len(ids)), ids] = np.log(0.93)
text = build_ctcdecoder(labels, kenlm_model_path=sys.argv[1]).decode(emissions)
assert text == "bugs bunny", text
PY
  say "KenLM ok: $(command -v lmplz) and build_binary made a 2-gram LM that kenlm and pyctcdecode decode with"
}
case ",$extras," in *,lm,*) check_lm ;; esac
say "ok: asrkit $(installed_version asrkit) with extras [${extras}], torch $torch_after," \
    "torchaudio $(installed_version torchaudio)"
