#!/usr/bin/env bash
# FSDD connected digits (TIDIGITS style) with DeepSpeech2, staged like icefall's prepare.sh:
#   ./run.sh [--stage N] [--stop-stage N] [--fsdd DIR] [--conf FILE] [--exp DIR] [--set key=value ...]
# Stages (each skips itself when its .done marker exists; delete the marker to redo it):
#   0 prepare   train / speaker-disjoint dev (theo) / official test, connected digits -> data/
#   1 train     asrkit train $conf -> $exp (resumes an interrupted run)
#   2 score     asrkit evaluate on dev and test -> $exp/{dev,test}.report.json, summary in $exp/scores.txt
#   3 sample    asrkit transcribe three test utterances
# Only the asrkit CLI is called. Run from anywhere; paths are relative to this folder.
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")"

stage=0
stop_stage=100
fsdd=${FSDD_DIR:-../../../shared/data/fsdd}
conf=conf/ds2.toml
exp=exp/ds2
data=data
sets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --fsdd) fsdd=$2; shift 2 ;;
    --conf) conf=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,10p' "$script"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "$(date '+%F %T') [stage $1] $2"; }
# ok_or_skipped RC FILE: asrkit exits 3 when it finished but left some inputs out (listed in FILE); 1 is a crash.
ok_or_skipped() {
  [ "$1" -eq 0 ] && return 0
  if [ "$1" -eq 3 ] && [ -s "$2" ]; then echo "run.sh: warning: some inputs were left out, see $2" >&2; return 0; fi
  exit "$1"
}

if run_stage 0; then
  if [ -f "$data/.done" ]; then log 0 "skip: $data/.done exists"; else
    log 0 "prepare FSDD connected digits from $fsdd"
    rc=0
    asrkit prepare fsdd "$fsdd" "$data" --connected --min-digits 1 --max-digits 7 --passes 2 --dev-speakers theo \
      || rc=$?
    ok_or_skipped "$rc" "$data/skipped.tsv"
    touch "$data/.done"
  fi
fi

if run_stage 1; then
  if [ -f "$exp/.done" ]; then log 1 "skip: $exp/.done exists"; else
    resume=(); [ -f "$exp/last.pt" ] && resume=(--resume)
    log 1 "train $conf -> $exp ${resume[*]:-}"
    start=$(date +%s)
    rc=0
    asrkit train "$conf" --data "$data" --exp "$exp" "${sets[@]}" "${resume[@]}" || rc=$?
    ok_or_skipped "$rc" "$exp/skipped.tsv"
    echo "train_seconds=$(( $(date +%s) - start ))" >> "$exp/timing.txt"
    touch "$exp/.done"
  fi
fi

if run_stage 2; then
  log 2 "score dev and test"
  for split in dev test; do
    echo "$split: $(asrkit evaluate "$exp" "$data/$split.jsonl" --report "$exp/$split.report.json")"
  done | tee "$exp/scores.txt"
fi

if run_stage 3; then
  log 3 "transcribe three test utterances"
  mapfile -t wavs < <(head -n 3 "$data/test.jsonl" | sed 's/.*"audio_filepath": "\([^"]*\)".*/\1/')
  asrkit transcribe "$exp" "${wavs[@]}"
fi
