#!/usr/bin/env bash
# CMU AN4 (census: names, letters, digits; 50 min train) with DeepSpeech2, LAS or an RNN-Transducer,
# staged like icefall's prepare.sh:
#   ./run.sh [--stage N] [--stop-stage N] [--model ds2|las|rnnt] [--an4-dir DIR] [--dev-speakers N]
#            [--data DIR] [--exp DIR] [--conf FILE] [--set key=value ...] [--no-lm] [--lm-order N]
#            [--workers N] [--device DEV (decoding; training reads train.device, e.g. --set train.device=cuda:1)]
# Stages (each skips itself when its output or .done marker exists; delete it to redo the stage):
#   0 prepare   asrkit prepare an4: train (minus --dev-speakers speakers -> dev), test when the corpus has it
#   1 check     manifest summary (utterances, hours, speakers) -> $data/summary.txt. There is no tokenizer
#               stage: `asrkit train` trains the tokenizer of $conf's [tokenizer] (chars or sentencepiece)
#               on train.jsonl and stores it in the checkpoint.
#   2 train     asrkit train $conf -> $exp (resumes an interrupted run)
#   3 lm        word n-gram of the training transcripts -> $data/lm/train_<order>gram.bin
#               (needs `asrkit lm build` and KenLM's lmplz; skipped with a message otherwise or with --no-lm)
#   4 decode    asrkit evaluate on dev and test: without an LM (nolm: CTC greedy; LAS / RNN-T
#               decode as their conf says), plus CTC beam search with the LM (CTC models only, when
#               `asrkit evaluate` has --lm; alpha/beta tuned on dev when `asrkit tune` exists)
#               -> $exp/decode/<decoder>/<split>.{json,txt}
#   5 score     WER / CER of every decode -> $exp/scores.txt (rewritten on every run)
# Defaults: --model ds2 (conf/<model>.toml, exp/<model>), --an4-dir ../../../shared/data/an4 (its copy
# has no test part: decoding then uses dev only), --dev-speakers 5, --data data.
# Only the asrkit CLI is called (plus shell basics). Paths are relative to this folder.
set -euo pipefail
cd "$(dirname "$0")"
self=$(basename "$0")

stage=0
stop_stage=100
model=ds2
an4_dir=${AN4_DIR:-../../../shared/data/an4}
dev_speakers=5
data=data
exp=
conf=
sets=()
use_lm=true
lm_order=3
workers=4
device=auto
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --an4-dir) an4_dir=$2; shift 2 ;;
    --dev-speakers) dev_speakers=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --conf) conf=$2; shift 2 ;;
    --set) sets+=(--set "$2"); shift 2 ;;
    --no-lm) use_lm=false; shift ;;
    --lm-order) lm_order=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$self"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$model" in
  ds2|las|rnnt) ;;
  *) echo "run.sh: --model $model: choose ds2, las or rnnt (conf/<model>.toml)" >&2; exit 2 ;;
esac
conf=${conf:-conf/$model.toml}
exp=${exp:-exp/$model}
lm=$data/lm/train_${lm_order}gram

run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
log() { echo "$(date '+%F %T') [stage $1] $2"; }
die() { echo "run.sh: $*" >&2; exit 2; }
# has_option CMD... OPTION: true when `asrkit CMD... --help` lists OPTION (false when CMD does not exist).
has_option() {
  local opt=${*: -1} help
  help=$(asrkit "${@:1:$#-1}" --help 2>/dev/null) || return 1
  [[ $help =~ (^|[^-a-z])$opt([^-a-z]|$) ]]
}
# ok_or_skipped RC FILE: asrkit exits 3 when it finished but left some inputs out (listed in FILE); 1 is a crash.
ok_or_skipped() {
  [ "$1" -eq 0 ] && return 0
  if [ "$1" -eq 3 ] && [ -s "$2" ]; then echo "run.sh: warning: some inputs were left out, see $2" >&2; return 0; fi
  exit "$1"
}
# is_ctc: the model family of $conf (after the --set overrides) decodes CTC emissions (DeepSpeech2)
is_ctc() {
  local family arg
  family=$(sed -n 's/^[[:space:]]*family[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$conf" | tail -n 1)
  for arg in "${sets[@]}"; do
    case "$arg" in model.family=*) family=${arg#model.family=}; family=${family//\"/} ;; esac
  done
  [ "${family:-deepspeech2}" = deepspeech2 ]
}
summarize() {  # manifest -> "name: N utterances, H h, S speakers"
  awk -v name="$(basename "$1" .jsonl)" '
    match($0, /"duration": *[0-9.eE+-]+/) { s = substr($0, RSTART, RLENGTH); sub(/.*: */, "", s); secs += s }
    match($0, /"speaker": *"[^"]*"/) { spk[substr($0, RSTART, RLENGTH)] = 1 }
    { n++ }
    END {
      k = 0; for (x in spk) k++
      printf "%s: %d utterances, %.2f h, %d speaker%s\n", name, n, secs / 3600, k, k == 1 ? "" : "s"
    }' "$1"
}

if run_stage 0; then
  if [ -f "$data/.done" ]; then log 0 "skip: $data/.done exists"; else
    [ -d "$an4_dir" ] || die "AN4 not found at $an4_dir; pass --an4-dir DIR (the folder holding etc/ and wav/)"
    log 0 "prepare AN4 from $an4_dir ($dev_speakers dev speakers)"
    rc=0
    asrkit prepare an4 "$an4_dir" "$data" --dev-speakers "$dev_speakers" --workers "$workers" || rc=$?
    ok_or_skipped "$rc" "$data/skipped.tsv"
    touch "$data/.done"
  fi
fi

if run_stage 1; then
  [ -s "$data/train.jsonl" ] || die "$data/train.jsonl missing or empty; run stage 0 first"
  if [ -f "$data/summary.txt" ] && [ "$data/summary.txt" -nt "$data/train.jsonl" ]; then
    log 1 "skip: $data/summary.txt is up to date"
  else
    log 1 "check manifests (the tokenizer is trained by asrkit train from train.jsonl, see $conf)"
    for m in "$data"/*.jsonl; do summarize "$m"; done > "$data/summary.txt"
  fi
  cat "$data/summary.txt"
fi

if run_stage 2; then
  if [ -f "$exp/.done" ]; then log 2 "skip: $exp/.done exists"; else
    resume=(); [ -f "$exp/last.pt" ] && resume=(--resume)
    log 2 "train $conf -> $exp ${resume[*]:-}"
    start=$(date +%s)
    rc=0
    asrkit train "$conf" --data "$data" --exp "$exp" --no-progress "${sets[@]}" "${resume[@]}" || rc=$?
    ok_or_skipped "$rc" "$exp/skipped.tsv"
    echo "train_seconds=$(( $(date +%s) - start ))" >> "$exp/timing.txt"
    touch "$exp/.done"
  fi
fi

if run_stage 3; then
  if [ "$use_lm" != true ]; then log 3 "skip: --no-lm"
  elif [ -f "$lm.bin" ]; then log 3 "skip: $lm.bin exists"
  elif ! asrkit lm build --help > /dev/null 2>&1; then
    log 3 "skip: this asrkit has no \`asrkit lm build\`; decoding without an LM"
  else
    log 3 "build a ${lm_order}-gram word LM from $data/train.jsonl -> $lm.bin"
    asrkit lm build "$data/train.jsonl" --out "$lm" --order "$lm_order"
  fi
fi

if run_stage 4; then
  [ -f "$exp/best.pt" ] || [ -f "$exp/last.pt" ] || die "no checkpoint in $exp; run stage 2 first"
  splits=(); for s in dev test; do [ -s "$data/$s.jsonl" ] && splits+=("$s"); done
  [ ${#splits[@]} -gt 0 ] || die "no dev.jsonl or test.jsonl in $data"
  decoders=(nolm)
  nolm_opts=()  # CTC: greedy, ignoring a tune.json beside the model; LAS / RNN-T: the model's own search
  if is_ctc && has_option evaluate --greedy; then nolm_opts=(--greedy); fi
  lm_opts=()
  if [ "$use_lm" = true ] && [ -f "$lm.bin" ] && is_ctc && has_option evaluate --lm; then
    decoders+=(lm)
    lm_opts=(--lm "$lm.bin")
    if [ -s "$data/dev.jsonl" ] && has_option tune --lm && has_option evaluate --decode-params; then
      tuned=$exp/decode/lm_tune.json
      if [ -f "$tuned" ]; then log 4 "skip: $tuned exists"; else
        log 4 "tune LM weights on dev -> $tuned"
        mkdir -p "$exp/decode"
        asrkit tune "$exp" "$data/dev.jsonl" --lm "$lm.bin" --out "$tuned" --device "$device" --no-progress
      fi
      lm_opts=(--decode-params "$tuned")
    fi
  elif [ "$use_lm" = true ] && [ -f "$lm.bin" ]; then
    log 4 "not using $lm.bin: the model is not CTC or \`asrkit evaluate\` has no --lm"
  fi
  for dec in "${decoders[@]}"; do
    mkdir -p "$exp/decode/$dec"
    for s in "${splits[@]}"; do
      out=$exp/decode/$dec/$s
      if [ -f "$out.txt" ]; then log 4 "skip: $out.txt exists"; continue; fi
      if [ "$dec" = nolm ]; then opts=("${nolm_opts[@]}"); else opts=("${lm_opts[@]}"); fi
      log 4 "evaluate $s ($dec) -> $out.json"
      rc=0
      asrkit evaluate "$exp" "$data/$s.jsonl" --report "$out.json" --device "$device" "${opts[@]}" > "$out.tmp" || rc=$?
      cat "$out.tmp"
      if [ "$rc" -eq 3 ]; then  # finished, but some utterances could not be read: the WER is not of the whole split
        echo "run.sh: some utterances of $data/$s.jsonl could not be read (named above, listed in $out.json);" \
          "fix or remove them, then rerun stage 4" >&2
        exit 3
      fi
      [ "$rc" -eq 0 ] || { echo "run.sh: asrkit evaluate failed (exit $rc)" >&2; exit "$rc"; }
      mv "$out.tmp" "$out.txt"
    done
  done
fi

if run_stage 5; then
  results=()
  for f in "$exp"/decode/nolm/*.txt "$exp"/decode/lm/*.txt; do [ -f "$f" ] && results+=("$f"); done
  [ ${#results[@]} -gt 0 ] || die "no decoding results in $exp/decode; run stage 4 first"
  log 5 "collect WER / CER -> $exp/scores.txt"
  for f in "${results[@]}"; do
    echo "$(basename "$f" .txt) $(basename "$(dirname "$f")"): $(cat "$f")"
  done | tee "$exp/scores.txt"
fi
