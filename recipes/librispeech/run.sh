#!/usr/bin/env bash
# LibriSpeech (openslr.org/12) with DeepSpeech2, LAS or an RNN-Transducer, staged like icefall's prepare.sh:
#   ./run.sh (--corpus-dir DIR | --download) [--subsets LIST] [--stage N] [--stop-stage N]
#            [--model deepspeech2|las|transducer] [--data DIR] [--exp DIR] [--conf FILE] [--set key=value ...]
#            [--init CKPT (the train stage starts from its matching weights)] [--extra-data DIR ...]
#            [--dev-speakers LIST] [--lm-text librispeech-lm-norm.txt.gz] [--lm-order N] [--lm-prune LIST] [--no-lm]
#            [--workers N] [--device DEV (decoding; training reads train.device, e.g. --set train.device=cuda:1)]
# Stages (each skips itself when its output or .done marker exists; delete it to redo the stage):
#   0 prepare   asrkit prepare librispeech, one subset at a time ($data/<subset>.jsonl, marker
#               $data/.<subset>.done; problems in $data/skipped.<subset>.tsv), from --corpus-dir (extracted
#               or tarballs) or downloaded with --download into $data/download; then train.jsonl = the
#               train-* subsets together, dev.jsonl = the first dev-* subset (dev WER while training); with
#               --dev-speakers (e.g. Mini LibriSpeech: --subsets train-clean-5 --dev-speakers
#               4640,5789,2136,3664) those speakers leave the train-* subsets for dev-heldout, which becomes
#               the dev set
#   1 check     manifest summary (utterances, hours, speakers) -> $data/summary.txt. There is no tokenizer
#               stage: `asrkit train` trains the tokenizer of $conf's [tokenizer] (chars or sentencepiece)
#               on train.jsonl and stores it in the checkpoint.
#   2 train     asrkit train $conf -> $exp (resumes an interrupted run); with --extra-data DIR (repeatable, a
#               prepared corpus such as ../an4/data) on the union of $data and those corpora. LM and decoding
#               stay on $data.
#   3 lm        word n-gram -> $data/lm/<text>_<order>gram.bin, from --lm-text (openslr.org/11's
#               librispeech-lm-norm.txt.gz, 800 M words: pruned with --lm-prune, default 0,1,1,1) or else
#               from the training transcripts
#               (needs `asrkit lm build` and KenLM's lmplz; skipped with a message otherwise or with --no-lm)
#   4 decode    asrkit evaluate on every dev-* and test-* subset: without an LM (nolm: CTC greedy; LAS and
#               RNN-T decode as their conf says), plus CTC beam search with the LM (CTC models only, when
#               `asrkit evaluate` has --lm; alpha/beta tuned on dev.jsonl when `asrkit tune` exists)
#               -> $exp/decode/<decoder>/<split>.{json,txt}
#   5 score     WER / CER of every decode -> $exp/scores.txt (rewritten on every run)
# Defaults: --subsets all seven (960 h of training audio; for 100 h give
# train-clean-100,dev-clean,dev-other,test-clean,test-other), --model deepspeech2 (conf/<model>.toml,
# exp/<model>; --model names a model family, the old ds2 and rnnt still work), --data data, --lm-order 4.
# A mirror for --download: $ASRKIT_LIBRISPEECH_URL.
# Only the asrkit CLI is called (plus shell basics). Paths are relative to this folder.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # shared options, helpers and stages; cd to this folder

corpus_dir=${LIBRISPEECH_DIR:-}
download=false
subsets=dev-clean,dev-other,test-clean,test-other,train-clean-100,train-clean-360,train-other-500
lm_text=
lm_prune=
lm_prune_given=false
lm_order=4
dev_speakers=
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus-dir) corpus_dir=$2; shift 2 ;;
    --download) download=true; shift ;;
    --subsets) subsets=$2; shift 2 ;;
    --dev-speakers) dev_speakers=$2; shift 2 ;;
    --lm-text) lm_text=$2; shift 2 ;;
    --lm-prune) lm_prune=$2; lm_prune_given=true; shift 2 ;;
    *) common_option "$@"; shift "$nargs" ;;
  esac
done
check_model
exp=${exp:-exp/$model}
IFS=, read -r -a subset_list <<< "$subsets"
train_subsets=(); dev_subsets=(); eval_subsets=()
if [ -n "$dev_speakers" ]; then dev_subsets+=(dev-heldout); eval_subsets+=(dev-heldout); fi
for s in "${subset_list[@]}"; do
  case "$s" in
    train-*) train_subsets+=("$s") ;;
    dev-*) dev_subsets+=("$s"); eval_subsets+=("$s") ;;
    test-*) eval_subsets+=("$s") ;;
    *) echo "run.sh: unknown subset $s in --subsets (dev-clean, dev-other, test-clean, test-other," \
         "train-clean-100, train-clean-360, train-other-500; Mini LibriSpeech: dev-clean-2, train-clean-5)" >&2
       exit 2 ;;
  esac
done
if [ -n "$lm_text" ]; then
  lm_name=$(basename "$lm_text"); lm_name=${lm_name%%.*}
  [ "$lm_prune_given" = true ] || lm_prune=0,1,1,1
else
  lm_name=train
fi
lm=$data/lm/${lm_name}_${lm_order}gram

if run_stage 0; then
  source_opts=()
  [ -n "$corpus_dir" ] && source_opts+=(--corpus-dir "$corpus_dir")
  [ "$download" = true ] && source_opts+=(--download)
  for s in "${subset_list[@]}"; do
    if [ -f "$data/.$s.done" ]; then log 0 "skip: $data/.$s.done exists"; continue; fi
    log 0 "prepare LibriSpeech $s ${source_opts[*]:-(looking in $data/download)}"
    mkdir -p "$data"
    rm -f "$data/skipped.tsv"
    rc=0
    split_opts=()
    case "$s" in train-*) [ -n "$dev_speakers" ] && split_opts=(--dev-speakers "$dev_speakers") ;; esac
    asrkit prepare librispeech "$data" --subsets "$s" --workers "$workers" "${source_opts[@]}" \
      "${split_opts[@]}" || rc=$?
    if [ -f "$data/skipped.tsv" ]; then mv "$data/skipped.tsv" "$data/skipped.$s.tsv"; fi
    ok_or_skipped "$rc" "$data/skipped.$s.tsv"
    touch "$data/.$s.done"
  done
  # the training and validation manifests asrkit train reads; replaced only when their content changes
  # (so that stage 1's up-to-date check holds)
  assemble() {  # OUT MANIFEST...
    local out=$1; shift
    local tmp="$out.tmp.$$"  # per process: two runs sharing --data must not remove each other's file
    cat "$@" > "$tmp"
    if cmp -s "$tmp" "$out"; then rm "$tmp"; else mv "$tmp" "$out"; log 0 "wrote $out"; fi
  }
  if [ ${#train_subsets[@]} -gt 0 ]; then
    manifests=(); for s in "${train_subsets[@]}"; do manifests+=("$data/$s.jsonl"); done
    assemble "$data/train.jsonl" "${manifests[@]}"
  else
    log 0 "warning: no train-* subset in --subsets; stage 2 needs $data/train.jsonl"
  fi
  if [ ${#dev_subsets[@]} -gt 0 ]; then assemble "$data/dev.jsonl" "$data/${dev_subsets[0]}.jsonl"; fi
fi

if run_stage 1; then
  manifests=(); for s in "${subset_list[@]}" "${dev_subsets[@]:0:1}"; do manifests+=("$data/$s.jsonl"); done
  stage_check 1 "${manifests[@]}"
fi

if run_stage 2; then stage_train 2 --no-progress; fi

if run_stage 3; then
  prune_opts=(); [ -n "$lm_prune" ] && prune_opts=(--prune "$lm_prune")
  stage_lm 3 "${lm_text:-$data/train.jsonl}" "${prune_opts[@]}"
fi

if run_stage 4; then
  need_checkpoint 2
  splits=(); for s in "${eval_subsets[@]}"; do [ -s "$data/$s.jsonl" ] && splits+=("$s"); done
  [ ${#splits[@]} -gt 0 ] || die "no dev-* or test-* manifest in $data (see --subsets)"
  stage_decode 4 "${splits[@]}"
fi

if run_stage 5; then stage_score 5; fi
