#!/usr/bin/env bash
# Make a local stand-in for the PyTorch base image of docker/Dockerfile, for machines that cannot pull from an
# image registry: no pytorch/pytorch, no debian:bookworm. `scripts/docker_smoke.sh` runs it; by hand:
#
#   scripts/docker_base.sh [--tag TAG] [--rebuild] [--torch-index URL]
#   podman build --format docker -f docker/Dockerfile --build-arg BASE_IMAGE=TAG -t asrkit .
#
#   --tag TAG          the stand-in's name (default: localhost/asrkit-torch-base:<torch version>)
#   --rebuild          make both images again even if they exist
#   --torch-index URL  where torch and torchaudio come from (default: the host pip's own index, i.e. PyPI, whose
#                      Linux torch is the CUDA build: ~2.9 GB of wheels, and it runs on the CPU too); e.g.
#                      https://download.pytorch.org/whl/cpu for the CPU build where that index is reachable
#
# Two images, each made only when missing (so a second run takes a second):
#   localhost/asrkit-debian:bookworm  a Debian bookworm root made by debootstrap (minbase) from the Debian mirror
#                                     of this host's apt sources (DEBIAN_MIRROR overrides), `podman import`ed
#   TAG                               FROM it: Debian's python3 (3.11) with its headers, a venv at /opt/venv on
#                                     PATH (as the PyTorch image has Python and pip on PATH, in /opt/conda),
#                                     and torch, torchaudio and numpy at the versions of constraints.txt
#
# The wheels are downloaded on the host with its pip (and its configuration: index, proxy, certificates), into
# $ASRKIT_DOCKER_CACHE/wheels (default ~/.cache/asrkit-docker), and bind-mounted into the build, so the build
# itself needs no route to PyPI for them and no layer keeps a copy. Where the host trusts extra CA certificates
# (/usr/local/share/ca-certificates/*.crt, e.g. of a TLS-inspecting egress proxy), the stand-in trusts them too
# and sets PIP_CERT, so that pip inside `podman build` of docker/Dockerfile reaches PyPI as the host's pip does
# (HOST_CA=0 leaves them out).
#
# Environment: PYTHON (the host's python with pip; default python3), DEBIAN_MIRROR, ASRKIT_DOCKER_CACHE, HOST_CA,
# and PODMAN_GLOBAL_OPTS / PODMAN_ULIMITS (scripts/podman_env.sh). As root, missing Debian packages (podman,
# runc, debootstrap) are installed with apt-get; otherwise the script says which to install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/podman_env.sh
. "$ROOT/scripts/podman_env.sh"
PYTHON="${PYTHON:-python3}"
CACHE="${ASRKIT_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/asrkit-docker}"
DEBIAN_IMAGE="localhost/asrkit-debian:bookworm"

usage() { sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

pin() {  # the version constraints.txt pins for $1
  local v
  v="$(sed -n -E "s/^[[:space:]]*$1[[:space:]]*==[[:space:]]*([^[:space:];#]+).*/\1/p" "$ROOT/constraints.txt" \
       | head -n 1)"
  [ -n "$v" ] || { echo "error: constraints.txt pins no $1==VERSION; add one (e.g. $1==X.Y.Z)" >&2; exit 2; }
  echo "$v"
}
TORCH_VERSION="$(pin torch)"
TORCHAUDIO_VERSION="$(pin torchaudio)"
NUMPY_VERSION="$(pin numpy)"

tag="localhost/asrkit-torch-base:$TORCH_VERSION"
rebuild=0
torch_index=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) [ $# -ge 2 ] || { echo "error: --tag needs a value, e.g. localhost/asrkit-torch-base:dev" >&2; exit 2; }
           tag="$2"; shift 2 ;;
    --tag=*) tag="${1#*=}"; shift ;;
    --rebuild) rebuild=1; shift ;;
    --torch-index) [ $# -ge 2 ] || { echo "error: --torch-index needs a URL" >&2; exit 2; }
                   torch_index="$2"; shift 2 ;;
    --torch-index=*) torch_index="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (valid: --tag TAG, --rebuild, --torch-index URL, --help)" >&2; exit 2 ;;
  esac
done

say() { echo "docker_base: $*"; }
start=$SECONDS
read -r -a ULIMITS <<<"$(podman_ulimits)"

image_exists() { pod image exists "$1"; }

# mapfile: no word splitting of package names; debootstrap only where the Debian image is to be made.
mapfile -t packages < <(podman_packages | tr ' ' '\n')
if [ "$rebuild" = 1 ] || ! command -v podman >/dev/null || ! image_exists "$DEBIAN_IMAGE"; then
  packages+=(debootstrap)
fi
ensure_debian_packages docker_base "${packages[@]}"
check_rootless docker_base

if [ "$rebuild" = 0 ] && image_exists "$tag"; then
  say "$tag exists (--rebuild makes it again)"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/asrkit-docker-base.XXXXXX")"
cleanup() {
  # the debootstrap root holds device nodes and root-owned files; as root, rm -rf removes them
  rm -rf "$work" 2>/dev/null || say "could not remove all of $work (remove it as root)"
}
trap cleanup EXIT

# --- 1. Debian bookworm root -> localhost/asrkit-debian:bookworm ----------------------------------------------
apt_mirror() {  # the host's Debian mirror for $1 = debian or debian-security, from its apt sources
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    grep -h -E '^[[:space:]]*(deb[[:space:]]|URIs:)' "$f" | grep -o -E "https?://[^[:space:]]*/$1/?([[:space:]]|\$)" \
      | tr -d '[:space:]' | sed 's:/$::' | head -n 1
  done | head -n 1
}

if [ "$rebuild" = 1 ] || ! image_exists "$DEBIAN_IMAGE"; then
  [ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root; run this script as root once to make" \
                               "$DEBIAN_IMAGE (later runs reuse it)" >&2; exit 2; }
  mirror="${DEBIAN_MIRROR:-$(apt_mirror debian)}"
  mirror="${mirror:-http://deb.debian.org/debian}"
  security="$(apt_mirror debian-security)"
  say "debootstrap bookworm (minbase) from $mirror"
  t=$SECONDS
  debootstrap --variant=minbase --include=ca-certificates bookworm "$work/root" "$mirror" \
      >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2
         echo "error: debootstrap from $mirror failed (log above); set DEBIAN_MIRROR to a Debian mirror this" \
              "machine reaches, e.g. DEBIAN_MIRROR=http://deb.debian.org/debian" >&2; exit 1; }
  {
    echo "deb $mirror bookworm main"
    echo "deb $mirror bookworm-updates main"
    [ -z "$security" ] || echo "deb $security bookworm-security main"
  } >"$work/root/etc/apt/sources.list"
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  say "podman import -> $DEBIAN_IMAGE"
  tar -C "$work/root" --numeric-owner -c . \
    | pod import --quiet --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$work/root"
  say "$DEBIAN_IMAGE made in $((SECONDS - t)) s"
fi

# --- 2. wheels of torch, torchaudio and numpy, downloaded on the host ----------------------------------------
# For the stand-in's Python (3.11, glibc 2.36), whatever the host's Python is: every manylinux tag up to 2.36.
wheels="$CACHE/wheels"
mkdir -p "$wheels"
platforms=()
for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
index_args=()
[ -z "$torch_index" ] || index_args=(--index-url "$torch_index" --extra-index-url https://pypi.org/simple)
requirements=("torch==$TORCH_VERSION" "torchaudio==$TORCHAUDIO_VERSION" "numpy==$NUMPY_VERSION")
say "pip download ${requirements[*]} ${index_args[*]} -> $wheels"
t=$SECONDS
"$PYTHON" -m pip download -q --disable-pip-version-check --dest "$wheels" --only-binary :all: \
  --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" "${index_args[@]}" "${requirements[@]}" \
  || { echo "error: $PYTHON -m pip download of ${requirements[*]} failed (above): the host's pip must reach" \
            "PyPI (or --torch-index); or set PYTHON to a python whose pip does" >&2; exit 1; }
say "wheels ready in $((SECONDS - t)) s ($(du -sh "$wheels" | cut -f1) in $wheels)"

# --- 3. the stand-in: python3 + venv + torch -> TAG -------------------------------------------------------------
ctx="$work/context"
mkdir -p "$ctx/ca"
ca_step=""
if [ "${HOST_CA:-1}" = 1 ] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/"
  say "the stand-in trusts this host's extra CA certificates: $(cd "$ctx/ca" && echo *.crt) (HOST_CA=0: not)"
  ca_step='COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt'
fi
cat >"$ctx/Containerfile" <<EOF
# Made by scripts/docker_base.sh: a local stand-in for pytorch/pytorch (CPU-only use; see docker/README.md).
FROM $DEBIAN_IMAGE
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
$ca_step
RUN apt-get update -qq \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \\
       python3 python3-venv python3-dev >/dev/null \\
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PIP_NO_CACHE_DIR=1 \\
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,source=wheels,target=/tmp/wheels \\
    pip install -q --no-index --find-links /tmp/wheels ${requirements[*]} \\
    && python -c 'import numpy, torch, torchaudio; print(torch.__version__, torchaudio.__version__, numpy.__version__)'
LABEL org.opencontainers.image.title="asrkit-torch-base" \\
      org.opencontainers.image.description="Debian bookworm, Python 3.11, torch $TORCH_VERSION (a local pytorch/pytorch)"
CMD ["/bin/bash"]
EOF
# The wheels folder is bind-mounted from the context: hard links where possible, else a copy.
cp -al "$wheels" "$ctx/wheels" 2>/dev/null || cp -a "$wheels" "$ctx/wheels"
say "podman build -> $tag"
t=$SECONDS
pod build --format docker "${ULIMITS[@]}" -t "$tag" -f "$ctx/Containerfile" "$ctx" \
  || { echo "error: building the stand-in $tag failed (above)" >&2; exit 1; }
size="$(pod image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.2f GB", $1 / 1e9 }')"
say "$tag made in $((SECONDS - t)) s; $size"
say "done in $((SECONDS - start)) s"
