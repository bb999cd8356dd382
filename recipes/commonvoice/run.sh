#!/usr/bin/env bash
# Mozilla Common Voice (one locale of a release) with DeepSpeech2, LAS or an RNN-Transducer, staged like
# icefall's prepare.sh:
#   ./run.sh --cv-dir DIR [--lang xx] [--stage N] [--stop-stage N] [--model deepspeech2|las|transducer]
#            [--min-upvotes N] [--data DIR] [--exp DIR] [--conf FILE] [--set key=value ...] [--no-lm]
#            [--extra-data DIR ... (more corpora for training)] [--init CKPT (training starts from its weights)]
#            [--lm-order N] [--workers N]
#            [--device DEV (decoding; training reads train.device, e.g. --set train.device=cuda:1)]
# Stages (each skips itself when its output or .done marker exists; delete it to redo the stage):
#   0 prepare   asrkit prepare commonvoice: the release's train/dev/test.tsv (or validated.tsv divided by
#               speaker when those are absent), MP3 -> 16 kHz FLAC cache in $data/flac (resumable)
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
# --cv-dir is the locale's folder of an extracted release (clips/ and the .tsv files), e.g.
# cv-corpus-17.0-2024-03-15/en. Defaults: --lang en, --model deepspeech2 (conf/<model>.toml; --model names a
# model family, the old ds2 and rnnt still work), --data data/<lang>, --exp exp/<lang>/<model>, --min-upvotes 0.
# Only the asrkit CLI is called (plus shell basics). Paths are relative to this folder.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # shared options, helpers and stages; cd to this folder

cv_dir=${CV_DIR:-}
lang=en
min_upvotes=0
data=
while [ $# -gt 0 ]; do
  case "$1" in
    --cv-dir) cv_dir=$2; shift 2 ;;
    --lang) lang=$2; shift 2 ;;
    --min-upvotes) min_upvotes=$2; shift 2 ;;
    *) common_option "$@"; shift "$nargs" ;;
  esac
done
check_model
data=${data:-data/$lang}
exp=${exp:-exp/$lang/$model}
lm=$data/lm/train_${lm_order}gram

if run_stage 0; then
  if [ -f "$data/.done" ]; then log 0 "skip: $data/.done exists"; else
    [ -n "$cv_dir" ] || die "pass --cv-dir DIR: the $lang folder of an extracted Common Voice release"
    [ -d "$cv_dir" ] || die "Common Voice folder $cv_dir not found; pass --cv-dir DIR (holding clips/ and *.tsv)"
    log 0 "prepare Common Voice ($lang) from $cv_dir"
    rc=0
    asrkit prepare commonvoice "$cv_dir" "$data" --lang "$lang" --min-upvotes "$min_upvotes" \
      --workers "$workers" || rc=$?
    ok_or_skipped "$rc" "$data/skipped.tsv"
    touch "$data/.done"
  fi
fi

if run_stage 1; then stage_check 1 "$data"/*.jsonl; fi
if run_stage 2; then stage_train 2 --no-progress; fi
if run_stage 3; then stage_lm 3 "$data/train.jsonl"; fi

if run_stage 4; then
  need_checkpoint 2
  splits=(); for s in dev test; do [ -s "$data/$s.jsonl" ] && splits+=("$s"); done
  [ ${#splits[@]} -gt 0 ] || die "no dev.jsonl or test.jsonl in $data"
  stage_decode 4 "${splits[@]}"
fi

if run_stage 5; then stage_score 5; fi
