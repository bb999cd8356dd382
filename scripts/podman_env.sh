# shellcheck shell=bash
# Sourced by scripts/docker_base.sh and scripts/docker_smoke.sh: how to run podman on this kind of machine, and
# the Debian packages they need. Not a script of its own.
#
# Environment:
#   PODMAN_GLOBAL_OPTS  podman's global options (default: --runtime runc --cgroup-manager cgroupfs: crun fails on
#                       hosts with hybrid cgroup v1/v2 hierarchies, runc works; cgroupfs needs no systemd)
#   PODMAN_ULIMITS      --ulimit options for `podman build` and `podman run` (default: see podman_ulimits below)

# podman, with the global options. Usage: pod run ...
pod() {
  # shellcheck disable=SC2086  # PODMAN_GLOBAL_OPTS is a list of options
  podman ${PODMAN_GLOBAL_OPTS---runtime runc --cgroup-manager cgroupfs} "$@"
}

# Rootful podman asks the OCI runtime for RLIMIT_NOFILE 1048576 and RLIMIT_NPROC 4194304 by default, which
# a host without CAP_SYS_RESOURCE (a VM sandbox, a container) refuses: "runc create failed: ... error setting
# rlimit type 7 (or 6): operation not permitted". So every build and run passes limits the host grants: the
# shell's hard open-files limit, and at most 32768 processes (larger values were refused on a 32768-pid host).
podman_ulimits() {
  if [ -n "${PODMAN_ULIMITS:-}" ]; then
    echo "$PODMAN_ULIMITS"
    return 0
  fi
  local nofile nproc
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ] && nofile=1048576
  [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  echo "--ulimit nofile=$nofile:$nofile --ulimit nproc=$nproc:$nproc"
}

# Install the Debian packages named (package names) that are missing, with apt-get as root; otherwise stop
# with the command to run. $1: the caller's name for messages.
ensure_debian_packages() {
  local who="$1" p missing=()
  shift
  if ! command -v dpkg-query >/dev/null; then
    for p in "$@"; do
      command -v "$p" >/dev/null || missing+=("$p")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    echo "error: $who needs ${missing[*]}, and this is not a Debian/Ubuntu system (no dpkg-query): install" \
         "them with the system's package manager and rerun" >&2
    exit 2
  fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "error: $who needs the Debian packages ${missing[*]}; install them with:" >&2
    echo "  sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 2
  fi
  echo "$who: apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Rootless podman (not root) needs subordinate UIDs and GIDs for the user, and newuidmap / slirp4netns.
check_rootless() {
  local who="$1" user
  [ "$(id -u)" = 0 ] && return 0
  user="$(id -un)"
  if ! grep -q "^${user}:" /etc/subuid 2>/dev/null || ! grep -q "^${user}:" /etc/subgid 2>/dev/null; then
    echo "error: $who runs podman rootless as $user, which needs subordinate IDs in /etc/subuid and" \
         "/etc/subgid (none for $user). Add them and rerun:" >&2
    echo "  sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $user && podman system migrate" >&2
    echo "(or run this script as root: rootful podman needs none of this)" >&2
    exit 2
  fi
}

# Packages for podman itself: runc (see PODMAN_GLOBAL_OPTS); rootless also needs uidmap and slirp4netns.
podman_packages() {
  echo podman runc
  [ "$(id -u)" = 0 ] || echo uidmap slirp4netns
}
