# shellcheck shell=bash disable=SC2034,SC2154  # shared with the sourcing recipe: variables set here, $lm there
# Shared by the recipes' run.sh (sourced, not run): the options every recipe has, stage bookkeeping, and the
# train / LM / decode / score stages. A run.sh sources it first thing after `set -euo pipefail`:
#   . "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# then overrides the defaults below that differ for its corpus, parses its own options (passing the rest to
# common_option) and runs its stages. Only the asrkit CLI is called (plus shell basics).

# The recipe that sourced this file; its folder becomes the working directory (a recipe's paths are relative
# to it, so it runs from anywhere).
recipe=$(realpath "${BASH_SOURCE[1]}")
cd "$(dirname "$recipe")" || exit

# Defaults of the shared options (a recipe may change them before parsing its arguments).
stage=0
stop_stage=100
model=deepspeech2
data=data
exp=
conf=
sets=()
init=()  # --init CKPT for stage_train's first start (not a resume)
extra_data=()  # --extra-data DIR ...: more --data folders for stage_train (several corpora in one run)
use_lm=true
lm_order=3
workers=4
device=auto
decode_model=  # the checkpoint the decode stage evaluates (set by decode_checkpoint; empty: $exp)

# usage: the recipe's header comment (from its second line down to `set -euo pipefail`), as --help shows it.
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$recipe"; }

# common_option ARG...: parse the shared option at the head of the arguments (its value too) and set nargs to
# the number of arguments it used; --help prints usage and exits 0, an unknown option exits 2.
common_option() {
  case "$1" in
    --stage) stage=$2; nargs=2 ;;
    --stop-stage) stop_stage=$2; nargs=2 ;;
    --model) model=$2; nargs=2 ;;
    --data) data=$2; nargs=2 ;;
    --exp) exp=$2; nargs=2 ;;
    --conf) conf=$2; nargs=2 ;;
    --set) sets+=(--set "$2"); nargs=2 ;;
    --init) init=(--init "$2"); nargs=2 ;;
    --extra-data) extra_data+=(--data "$2"); nargs=2 ;;
    --no-lm) use_lm=false; nargs=1 ;;
    --lm-order) lm_order=$2; nargs=2 ;;
    --workers) workers=$2; nargs=2 ;;
    --device) device=$2; nargs=2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
}

# check_model: --model is a model family, deepspeech2, las or transducer (the old names ds2 and rnnt still work,
# with a note on stderr; anything else exits 2); --conf defaults to conf/<model>.toml.
check_model() {
  local new
  case "$model" in
    ds2) new=deepspeech2 ;;
    rnnt) new=transducer ;;
    deepspeech2|las|transducer) new=$model ;;
    *) echo "run.sh: --model $model: choose deepspeech2, las or transducer (conf/<model>.toml)" >&2; exit 2 ;;
  esac
  if [ "$new" != "$model" ]; then echo "note: --model $model is now --model $new" >&2; model=$new; fi
  conf=${conf:-conf/$model.toml}
}

# run_stage N: stage N is within --stage .. --stop-stage.
run_stage() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
# log N MESSAGE: a timestamped line of stage N on stdout.
log() { echo "$(date '+%F %T') [stage $1] $2"; }
# die MESSAGE: the message on stderr, exit 2 (an input or an earlier stage is missing).
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
# model_family: model.family of $conf (after the --set overrides, as `asrkit config show` resolves it); exit 2
# when asrkit cannot read $conf (its message says why). is_ctc: it decodes CTC emissions (DeepSpeech2).
model_family() {
  asrkit config show "$conf" "${sets[@]}" --key model.family || die "cannot read model.family of $conf"
}
is_ctc() {
  local family
  family=$(model_family) || exit 2
  [ "$family" = deepspeech2 ]
}
# need_checkpoint N: exit 2 unless $exp holds a checkpoint (best.pt or last.pt) of training stage N.
need_checkpoint() {
  if [ ! -f "$exp/best.pt" ] && [ ! -f "$exp/last.pt" ]; then die "no checkpoint in $exp; run stage $1 first"; fi
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

# stage_check N MANIFEST...: summary of the manifests -> $data/summary.txt (kept while newer than all of
# them), printed. Needs $data/train.jsonl (stage 0).
stage_check() {
  local n=$1 m fresh=true; shift
  [ -s "$data/train.jsonl" ] || die "$data/train.jsonl missing or empty; run stage 0 first"
  for m in "$@"; do
    if [ ! "$data/summary.txt" -nt "$m" ]; then fresh=false; fi
  done
  if [ "$fresh" = true ]; then
    log "$n" "skip: $data/summary.txt is up to date"
  else
    log "$n" "check manifests (the tokenizer is trained by asrkit train from train.jsonl, see $conf)"
    for m in "$@"; do summarize "$m"; done > "$data/summary.txt"
  fi
  cat "$data/summary.txt"
}

# stage_train N [OPTION...]: asrkit train $conf on $data -> $exp with the --set overrides and OPTIONs (with
# --extra-data DIR ..., on the union of $data and those corpora), resuming from $exp/last.pt (asrkit refuses a
# resume with other --data folders); --init CKPT starts a new run from that model's matching weights (a resume
# ignores it: last.pt has them); train seconds appended to $exp/timing.txt; skipped once $exp/.done exists.
stage_train() {
  local n=$1 rc=0 start resume=("${init[@]}"); shift
  if [ -f "$exp/.done" ]; then log "$n" "skip: $exp/.done exists"; return 0; fi
  if [ -f "$exp/last.pt" ]; then resume=(--resume); fi
  log "$n" "train $conf -> $exp ${resume[*]:-}"
  start=$(date +%s)
  asrkit train "$conf" --data "$data" "${extra_data[@]}" --exp "$exp" "$@" "${sets[@]}" "${resume[@]}" || rc=$?
  ok_or_skipped "$rc" "$exp/skipped.tsv"
  echo "train_seconds=$(( $(date +%s) - start ))" >> "$exp/timing.txt"
  touch "$exp/.done"
}

# stage_lm N TEXT [OPTION...]: a $lm_order-gram word LM of TEXT (a manifest's transcripts or a text file;
# OPTIONs go to `asrkit lm build`) -> $lm.bin. Skipped with a message with --no-lm, once $lm.bin exists, when
# this asrkit has no `asrkit lm build`, or when KenLM's lmplz / build_binary are not installed (`make kenlm`).
stage_lm() {
  local n=$1 text=$2 rc=0 err; shift 2
  if [ "$use_lm" != true ]; then log "$n" "skip: --no-lm"; return 0; fi
  if [ -f "$lm.bin" ]; then log "$n" "skip: $lm.bin exists"; return 0; fi
  if ! asrkit lm build --help > /dev/null 2>&1; then
    log "$n" "skip: this asrkit has no \`asrkit lm build\`; decoding without an LM"
    return 0
  fi
  log "$n" "build a ${lm_order}-gram word LM from $text${*:+ $*} -> $lm.bin"
  # its standard output passes through; its error output is kept to tell a missing KenLM from a failure
  { err=$(asrkit lm build "$text" --out "$lm" --order "$lm_order" "$@" 2>&1 1>&3 3>&-) || rc=$?; } 3>&1
  if [ "$rc" -ne 0 ] && [[ $err == *"KenLM's "*" was not found"* ]]; then
    log "$n" "skip: KenLM's lmplz / build_binary not found (\`make kenlm\` builds them); decoding without an LM"
    return 0
  fi
  if [ -n "$err" ]; then echo "$err" >&2; fi
  if [ "$rc" -ne 0 ]; then exit "$rc"; fi
}

# lm_decoding N [OPTION...]: how asrkit evaluate decodes with the LM -> lm_opts. CTC (DeepSpeech2): --lm $lm.bin,
# or the alpha / beta tuned on $data/dev.jsonl (asrkit tune of $decode_model, default $exp, with OPTIONs); a
# transducer: the LM fused into its beam search (8 beams) with lm_weight / lm_bonus tuned on dev (tune's default
# grid; the OPTIONs are CTC's). Tuned settings go to $exp/decode/lm_tune.json, kept once written. lm_opts stays
# empty without --lm decoding: --no-lm, no $lm.bin, an attention decoder (LAS: tune would also search its CTC
# weight, 4x4x4 decodes of dev; run `asrkit tune` by hand), a transducer without a dev set, or an asrkit that
# cannot (a message for the last three). Call it as a command, not in a test.
lm_decoding() {
  local n=$1 tuned=$exp/decode/lm_tune.json family; shift
  lm_opts=()
  if [ "$use_lm" != true ] || [ ! -f "$lm.bin" ]; then return 0; fi
  family=$(model_family) || exit 2
  if [ "$family" = transducer ]; then
    set --  # alpha / beta ranges are CTC's
    if [ ! -s "$data/dev.jsonl" ] || ! has_option tune --weight-range || ! has_option evaluate --decode-params; then
      log "$n" "not using $lm.bin: fusing it into a transducer's beam needs a dev set to tune its weight on" \
        "(and an asrkit whose tune has --weight-range)"
      return 0
    fi
  elif [ "$family" != deepspeech2 ] || ! has_option evaluate --lm; then
    log "$n" "not using $lm.bin: the recipe decodes CTC and transducer models with the LM (this is $family; tune" \
      "an attention decoder's fusion with \`asrkit tune --lm\`) and needs an \`asrkit evaluate\` with --lm"
    return 0
  fi
  lm_opts=(--lm "$lm.bin")
  if [ -s "$data/dev.jsonl" ] && has_option tune --lm && has_option evaluate --decode-params; then
    if [ -f "$tuned" ]; then log "$n" "skip: $tuned exists"; else
      log "$n" "tune LM weights on dev -> $tuned"
      mkdir -p "$exp/decode"
      asrkit tune "${decode_model:-$exp}" "$data/dev.jsonl" --lm "$lm.bin" --out "$tuned" --device "$device" \
        --no-progress "$@"
    fi
    lm_opts=(--decode-params "$tuned")
  fi
}

# evaluate_split N DECODER SPLIT [OPTION...]: asrkit evaluate $decode_model (default $exp: its best.pt) on
# $data/SPLIT.jsonl with OPTIONs -> $exp/decode/DECODER/SPLIT.json (report) and .txt (its WER line); skipped
# once the .txt exists. Exit 3 when some utterances could not be read (the WER would not be the whole split's).
evaluate_split() {
  local n=$1 dec=$2 s=$3 rc=0 out; shift 3
  out=$exp/decode/$dec/$s
  mkdir -p "$exp/decode/$dec"
  if [ -f "$out.txt" ]; then log "$n" "skip: $out.txt exists"; return 0; fi
  log "$n" "evaluate $s ($dec) -> $out.json"
  asrkit evaluate "${decode_model:-$exp}" "$data/$s.jsonl" --report "$out.json" --device "$device" "$@" \
    > "$out.tmp" || rc=$?
  cat "$out.tmp"
  if [ "$rc" -eq 3 ]; then  # finished, but some utterances could not be read: the WER is not of the whole split
    echo "run.sh: some utterances of $data/$s.jsonl could not be read (named above, listed in $out.json);" \
      "fix or remove them, then rerun stage $n" >&2
    exit 3
  fi
  [ "$rc" -eq 0 ] || { echo "run.sh: asrkit evaluate failed (exit $rc)" >&2; exit "$rc"; }
  mv "$out.tmp" "$out.txt"
}

# decode_checkpoint N: the model the decode stage evaluates -> decode_model: $exp (its best.pt), or, when the
# conf keeps epoch checkpoints (train.keep_epochs > 0, after the --set overrides), the average of the K of them
# with the lowest dev WER, K = min(5, keep_epochs, epoch checkpoints in $exp): $exp/averaged-best<K>.pt
# (asrkit average --best K; kept once written).
decode_checkpoint() {
  local n=$1 keep k have avg f
  decode_model=$exp
  keep=$(asrkit config show "$conf" "${sets[@]}" --key train.keep_epochs) ||
    die "cannot read train.keep_epochs of $conf"
  if ! [[ $keep =~ ^[0-9]+$ ]] || [ "$keep" -eq 0 ]; then return 0; fi
  have=0
  for f in "$exp"/epoch-*.pt; do [ -f "$f" ] && have=$((have + 1)); done
  if [ "$have" -eq 0 ]; then
    log "$n" "train.keep_epochs = $keep, but no epoch checkpoints in $exp: decoding $exp/best.pt"
    return 0
  fi
  k=$(( keep < 5 ? keep : 5 ))
  k=$(( have < k ? have : k ))
  avg=$exp/averaged-best$k.pt
  if [ -f "$avg" ]; then log "$n" "skip: $avg exists"; else
    log "$n" "average the $k epoch checkpoints of $exp with the lowest dev WER -> $avg"
    asrkit average "$exp" --best "$k"
  fi
  decode_model=$avg
  log "$n" "decode the averaged checkpoint $avg (train.keep_epochs = $keep) instead of $exp/best.pt"
}

# stage_decode N SPLIT...: evaluate every SPLIT without an LM (decoder nolm: CTC greedy, ignoring a tune.json
# beside the model; LAS / transducers: the model's own search), then with the LM where lm_decoding allows (lm); the
# model is decode_checkpoint's (the averaged checkpoint when the conf keeps epoch checkpoints).
stage_decode() {
  local n=$1 dec s nolm_opts=(); shift
  if is_ctc && has_option evaluate --greedy; then nolm_opts=(--greedy); fi
  decode_checkpoint "$n"
  lm_decoding "$n"
  for s in "$@"; do evaluate_split "$n" nolm "$s" "${nolm_opts[@]}"; done
  if [ ${#lm_opts[@]} -gt 0 ]; then
    for s in "$@"; do evaluate_split "$n" lm "$s" "${lm_opts[@]}"; done
  fi
}

# write_scores N OUT RESULT...: "<split> <decoder>: <WER line>" for every $exp/decode/<decoder>/<split>.txt
# RESULT -> OUT (rewritten), printed.
write_scores() {
  local n=$1 out=$2 f; shift 2
  log "$n" "collect WER / CER -> $out"
  for f in "$@"; do
    echo "$(basename "$f" .txt) $(basename "$(dirname "$f")"): $(cat "$f")"
  done | tee "$out"
}

# stage_score N: WER / CER of every decode (made by stage N-1) -> $exp/scores.txt, rewritten on every run.
stage_score() {
  local n=$1 f results=()
  for f in "$exp"/decode/nolm/*.txt "$exp"/decode/lm/*.txt; do
    if [ -f "$f" ]; then results+=("$f"); fi
  done
  [ ${#results[@]} -gt 0 ] || die "no decoding results in $exp/decode; run stage $((n - 1)) first"
  write_scores "$n" "$exp/scores.txt" "${results[@]}"
}
