#!/usr/bin/env bash
# Build docker/Dockerfile with podman and use the image as a user would (`make docker-smoke`): from a fresh
# Debian/Ubuntu machine, no image registry needed, no GPU (everything runs on the CPU).
#
#   scripts/docker_smoke.sh [--rebuild-base] [--no-cache] [--keep]
#
#   --rebuild-base  make the local base images again (scripts/docker_base.sh --rebuild)
#   --no-cache      build the asrkit image without podman's layer cache (KenLM is compiled again)
#   --keep          keep the mounted data/ and exp/ folders (always kept on failure)
#
# Steps: podman and runc (apt-get, as root, where missing); the base image (BASE_IMAGE, or else the local stand-in
# for the PyTorch image that scripts/docker_base.sh makes: Debian bookworm + Python 3.11 + torch, made once and
# then reused); `podman build -f docker/Dockerfile --build-arg BASE_IMAGE=...`, the same Dockerfile as for GPU
# servers; then, in containers of the image, as its non-root user, with host folders mounted on /data and
# /exp and the embedded FSDD digits (tests/assets/fsdd) read-only on /corpus/fsdd:
#   prepare fsdd -> train (1 epoch, at most STEPS steps) -> transcribe -> evaluate -> lm build (lmplz and
#   build_binary in the image) -> evaluate with the LM (flashlight-text) -> transcribe with the LM through
#   pyctcdecode (the kenlm module)
# checking what each step writes. Ends with the wall time and the image size; exits non-zero, naming the step,
# on the first failure.
#
# Environment:
#   BASE_IMAGE  build on this image instead of the local stand-in (e.g. pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
#               where a registry is reachable)
#   IMAGE       the image to build (default localhost/asrkit:smoke)
#   SMOKE_DIR   the host folder holding data/ and exp/ (default $TMPDIR/asrkit-docker-smoke; emptied first)
#   STEPS       most training steps (default 40; one epoch of the small split is about 8-10)
#   and those of scripts/docker_base.sh and scripts/podman_env.sh (PODMAN_GLOBAL_OPTS, PODMAN_ULIMITS).
#
# As root, podman runs rootful and the image's user keeps UID 1000 (data/ and exp/ are chowned to it); as another
# user, podman runs rootless (subordinate IDs needed) with --userns=keep-id and an image built with
# ASRKIT_UID=$(id -u), so the files in data/ and exp/ are that user's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/podman_env.sh
. "$ROOT/scripts/podman_env.sh"
IMAGE="${IMAGE:-localhost/asrkit:smoke}"
SMOKE_DIR="${SMOKE_DIR:-${TMPDIR:-/tmp}/asrkit-docker-smoke}"
STEPS="${STEPS:-40}"
CORPUS="$ROOT/tests/assets/fsdd"

usage() { sed -n '2,32p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

base_args=()
build_args=()
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild-base) base_args+=(--rebuild); shift ;;
    --no-cache) build_args+=(--no-cache); shift ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1 (valid: --rebuild-base, --no-cache, --keep, --help)" >&2; exit 2 ;;
  esac
done
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] \
  || { echo "error: STEPS=$STEPS is not a positive whole number (e.g. STEPS=40)" >&2; exit 2; }
[ -d "$CORPUS/recordings" ] \
  || { echo "error: no $CORPUS/recordings: the embedded FSDD digits are missing from this checkout" >&2; exit 2; }

start=$SECONDS
step_start=$SECONDS
current="setup"
step() { current="$*"; echo; echo "== docker_smoke: $* (at $((SECONDS - start)) s)"; step_start=$SECONDS; }
took() { echo "-- docker_smoke: $current: ok in $((SECONDS - step_start)) s"; }
fail() {
  echo "error: docker_smoke: $current: $*" >&2
  echo "(the mounted folders are kept in $SMOKE_DIR)" >&2
  exit 1
}
on_exit() {
  local rc=$?
  [ "$rc" = 0 ] || echo "docker_smoke: FAILED at \"$current\" after $((SECONDS - start)) s (exit $rc)" >&2
}
trap on_exit EXIT
read -r -a ULIMITS <<<"$(podman_ulimits)"

# --- 1. podman and the base image ----------------------------------------------------------------------------
step "podman and the base image"
mapfile -t packages < <(podman_packages | tr ' ' '\n')
ensure_debian_packages docker_smoke "${packages[@]}"
check_rootless docker_smoke
echo "$(podman --version), runtime options: ${PODMAN_GLOBAL_OPTS---runtime runc --cgroup-manager cgroupfs}"
if [ -n "${BASE_IMAGE:-}" ]; then
  base="$BASE_IMAGE"
  echo "base image: $base (BASE_IMAGE)"
else
  torch_version="$(sed -n -E 's/^[[:space:]]*torch[[:space:]]*==[[:space:]]*([^[:space:];#]+).*/\1/p' constraints.txt \
                  | head -n 1)"
  base="localhost/asrkit-torch-base:${torch_version:-dev}"
  scripts/docker_base.sh --tag "$base" "${base_args[@]}"
fi
took

# --- 2. the asrkit image ----------------------------------------------------------------------------------------
step "podman build -f docker/Dockerfile --build-arg BASE_IMAGE=$base -t $IMAGE"
rm -rf "$SMOKE_DIR"
mkdir -p "$SMOKE_DIR/data" "$SMOKE_DIR/exp"
userns=()
if [ "$(id -u)" = 0 ]; then
  uid=1000  # the Dockerfile's default ASRKIT_UID
else
  uid="$(id -u)"
  build_args+=(--build-arg "ASRKIT_UID=$uid")
  userns=(--userns=keep-id)
fi
# --format docker: podman's default OCI format has no SHELL, and would run the Dockerfile's RUNs with /bin/sh
# instead of bash -o pipefail.
echo "(the full log: $SMOKE_DIR/build.log)"
pod build --format docker "${ULIMITS[@]}" "${build_args[@]}" --build-arg "BASE_IMAGE=$base" \
    -f docker/Dockerfile -t "$IMAGE" . 2>&1 \
  | tee "$SMOKE_DIR/build.log" \
  | { grep --line-buffered -E '^(\[[0-9/]+\] )?STEP |^(build_kenlm|install): |^(error|Error)' || true; } \
  || { tail -n 40 "$SMOKE_DIR/build.log" >&2; fail "the build failed (the end of $SMOKE_DIR/build.log is above)"; }
size_bytes="$(pod image inspect --format '{{.Size}}' "$IMAGE")"
base_bytes="$(pod image inspect --format '{{.Size}}' "$base")"
gb() { awk -v b="$1" 'BEGIN { printf "%.2f GB", b / 1e9 }'; }
echo "image $IMAGE: $(gb "$size_bytes") (base $base: $(gb "$base_bytes"))"
took

# --- 3. in the container ---------------------------------------------------------------------------------------
[ "$(id -u)" = 0 ] && chown "$uid:$uid" "$SMOKE_DIR/data" "$SMOKE_DIR/exp"
run_image() {  # podman run IMAGE with the mounts; arguments: [podman run options...] -- [asrkit arguments...]
  local opts=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  pod run --rm "${ULIMITS[@]}" "${userns[@]}" --shm-size=1g --network=none \
    -v "$CORPUS:/corpus/fsdd:ro" -v "$SMOKE_DIR/data:/data" -v "$SMOKE_DIR/exp:/exp" \
    "${opts[@]}" "$IMAGE" "$@"
}
asrkit_in_image() {  # asrkit ARGS in the container; its output is also kept in $SMOKE_DIR/<step>.log
  local log="$SMOKE_DIR/${current%% *}.log"
  run_image -- "$@" 2>&1 | tee "$log" \
    || fail "'asrkit $*' exited with $? (output above and in $log)"
}
py_check() {  # a Python check run in the container as its user (stdin: the code; arguments: sys.argv[1:])
  run_image -i --entrypoint python -- - "$@" || fail "the check of its output failed (above)"
}

step "user"
# shellcheck disable=SC2016  # expanded by bash in the container
who="$(run_image --entrypoint bash -- -c 'echo "$(id -un) $(id -u)"; touch /data/.writable /exp/.writable')" \
  || fail "the container could not run, or its user cannot write to /data and /exp (mounted from $SMOKE_DIR)"
echo "container user: $who"
[ "$who" = "asrkit $uid" ] || fail "expected the non-root user 'asrkit $uid', got '$who'"
rm -f "$SMOKE_DIR/data/.writable" "$SMOKE_DIR/exp/.writable"
took

step "prepare fsdd (connected digits)"
asrkit_in_image prepare fsdd /corpus/fsdd /data/fsdd --connected --min-digits 1 --max-digits 4 --passes 1 \
  --dev-speakers theo
py_check <<'PY'
import json
for split in ("train", "dev", "test"):
    rows = [json.loads(line) for line in open(f"/data/fsdd/{split}.jsonl")]
    assert rows, f"/data/fsdd/{split}.jsonl is empty"
    path = rows[0]["audio_filepath"]
    assert path.startswith("/data/fsdd/"), f"{split}: audio path {path} is not under /data/fsdd"
    assert set(rows[0]["text"]) <= set("zeroonetwhfuivsxg "), f"{split}: odd text {rows[0]['text']!r}"
    print(f"{split}: {len(rows)} utterances, e.g. {rows[0]['text']!r}")
PY
took

step "train (recipes/fsdd/conf/demo.toml, 1 epoch, at most $STEPS steps)"
asrkit_in_image train /opt/asrkit/recipes/fsdd/conf/demo.toml --data /data/fsdd --exp /exp/fsdd \
  --set train.epochs=1 --set "train.max_steps=$STEPS" --no-progress
expected=(last.pt config.json)
# best.pt and history.jsonl come at the end of the epoch, unless STEPS stopped the training before it.
grep -q '[1-9][0-9]* epochs\{0,1\}[;,]' "$SMOKE_DIR/train.log" && expected+=(best.pt history.jsonl)
for f in "${expected[@]}"; do
  [ -s "$SMOKE_DIR/exp/fsdd/$f" ] || fail "no $SMOKE_DIR/exp/fsdd/$f after training"
done
owner="$(stat -c %u "$SMOKE_DIR/exp/fsdd/last.pt")"
[ "$owner" = "$uid" ] || fail "exp/fsdd/last.pt belongs to UID $owner on the host, expected $uid"
checkpoints=("$SMOKE_DIR"/exp/fsdd/*.pt)
echo "checkpoints: ${checkpoints[*]##*/} (owned by UID $owner)"
took

step "transcribe (3 test utterances)"
mapfile -t wavs < <(head -n 3 "$SMOKE_DIR/data/fsdd/test.jsonl" | sed -E 's/.*"audio_filepath": *"([^"]+)".*/\1/')
asrkit_in_image transcribe /exp/fsdd "${wavs[@]}" --format jsonl --out /exp/fsdd/transcripts.jsonl
py_check "${wavs[@]}" <<'PY'
import json
import sys
rows = [json.loads(line) for line in open("/exp/fsdd/transcripts.jsonl")]
assert [r["audio_filepath"] for r in rows] == sys.argv[1:], f"transcribed {[r['audio_filepath'] for r in rows]}"
for r in rows:
    assert isinstance(r["text"], str) and isinstance(r["score"], float), r
    print(f"{r['audio_filepath']}: {r['text']!r}")
PY
took

step "evaluate (test split)"
asrkit_in_image evaluate /exp/fsdd /data/fsdd/test.jsonl
py_check <<'PY'
import json
r = json.load(open("/exp/fsdd/test.report.json"))
assert 0 <= r["wer"] <= 5 and 0 <= r["cer"] <= 5 and r["utterances"], r
print(f"report: WER {r['wer']:.2%}, CER {r['cer']:.2%} ({r['decoding']}, {len(r['utterances'])} utterances)")
PY
took

step "lm build (lmplz and build_binary in the image)"
asrkit_in_image lm build /data/fsdd/train.jsonl --out /exp/lm/digits --order 3
for f in digits.arpa digits.bin digits.unigrams.txt; do
  [ -s "$SMOKE_DIR/exp/lm/$f" ] || fail "no $SMOKE_DIR/exp/lm/$f after lm build"
done
grep -q '^ngram 3=' "$SMOKE_DIR/exp/lm/digits.arpa" || fail "$SMOKE_DIR/exp/lm/digits.arpa has no 3-grams"
took

step "evaluate with the LM (flashlight-text lexicon search, the default backend)"
asrkit_in_image evaluate /exp/fsdd /data/fsdd/test.jsonl --lm /exp/lm/digits.bin \
  --report /exp/fsdd/test-lm.report.json
py_check <<'PY'
import json
r = json.load(open("/exp/fsdd/test-lm.report.json"))
d = r["decoding"]
assert 0 <= r["wer"] <= 5 and d["lm"] == "/exp/lm/digits.bin", r
print(f"report: WER {r['wer']:.2%} (backend {d['backend']}, beam {d['beam_size']}, alpha {d['alpha']}, beta {d['beta']})")
PY
took

step "transcribe with the LM through pyctcdecode (the kenlm module)"
asrkit_in_image transcribe /exp/fsdd "${wavs[@]}" --lm /exp/lm/digits.bin --set decode.backend=pyctcdecode \
  --format jsonl --out /exp/fsdd/transcripts-lm.jsonl
py_check <<'PY'
import json
rows = [json.loads(line) for line in open("/exp/fsdd/transcripts-lm.jsonl")]
words = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
assert len(rows) == 3, rows
for r in rows:  # the LM's vocabulary is the ten digit words: whatever it decodes is made of them
    assert set(r["text"].split()) <= words, f"{r['text']!r} is not digit words"
    print(f"{r['audio_filepath']}: {r['text']!r}")
PY
took

[ "$keep" = 1 ] || rm -rf "$SMOKE_DIR"
echo
echo "== docker_smoke: ok in $((SECONDS - start)) s; image $IMAGE $(gb "$size_bytes") on base $base $(gb "$base_bytes")"
[ "$keep" = 0 ] || echo "data and experiments kept in $SMOKE_DIR"
