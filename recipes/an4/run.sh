#!/usr/bin/env bash
# CMU AN4 (census: names, letters, digits; 50 min train) with DeepSpeech2, LAS or an RNN-Transducer,
# staged like icefall's prepare.sh:
#   ./run.sh [--stage N] [--stop-stage N] [--model deepspeech2|las|transducer] [--an4-dir DIR]
#            [--dev-speakers N] [--data DIR] [--exp DIR] [--conf FILE] [--set key=value ...] [--no-lm]
#            [--lm-order N] [--workers N]
#            [--device DEV (decoding; training reads train.device, e.g. --set train.device=cuda:1)]
#            [--extra-data DIR ...] [--init CKPT (stage 2 starts from its matching weights)]
# Stages (each skips itself when its output or .done marker exists; delete it to redo the stage):
#   0 prepare   asrkit prepare an4: train (minus --dev-speakers speakers -> dev), test when the corpus has it
#   1 check     manifest summary (utterances, hours, speakers) -> $data/summary.txt. There is no tokenizer
#               stage: `asrkit train` trains the tokenizer of $conf's [tokenizer] (chars or sentencepiece)
#               on train.jsonl and stores it in the checkpoint.
#   2 train     asrkit train $conf -> $exp (resumes an interrupted run); with --extra-data DIR (repeatable:
#               a prepared corpus, a folder with train.jsonl and optionally dev.jsonl) on the union of $data
#               and those corpora (asrkit train --data $data --data DIR ...). LM and decoding stay on $data.
#   3 lm        word n-gram of the training transcripts -> $data/lm/train_<order>gram.bin
#               (needs `asrkit lm build` and KenLM's lmplz; skipped with a message otherwise or with --no-lm)
#   4 decode    asrkit evaluate on dev and test: without an LM (nolm: CTC greedy; LAS / RNN-T
#               decode as their conf says), plus CTC beam search with the LM (CTC models only, when
#               `asrkit evaluate` has --lm; alpha/beta tuned on dev when `asrkit tune` exists)
#               -> $exp/decode/<decoder>/<split>.{json,txt}. A conf that keeps epoch checkpoints
#               (train.keep_epochs, e.g. conf/conformer_ctc_cpu.toml) decodes their average instead of best.pt:
#               asrkit average --best min(5, keep_epochs) -> $exp/averaged-best<N>.pt
#   5 score     WER / CER of every decode -> $exp/scores.txt (rewritten on every run)
# Defaults: --model deepspeech2 (conf/<model>.toml, exp/<model>; --model names a model family, the old ds2 and
# rnnt still work), --an4-dir ../../../shared/data/an4 (its copy has no test part: decoding then uses dev only),
# --dev-speakers 5, --data data.
# Only the asrkit CLI is called (plus shell basics). Paths are relative to this folder.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # shared options, helpers and stages; cd to this folder

an4_dir=${AN4_DIR:-../../../shared/data/an4}
dev_speakers=5
while [ $# -gt 0 ]; do
  case "$1" in
    --an4-dir) an4_dir=$2; shift 2 ;;
    --dev-speakers) dev_speakers=$2; shift 2 ;;
    *) common_option "$@"; shift "$nargs" ;;
  esac
done
check_model
exp=${exp:-exp/$model}
lm=$data/lm/train_${lm_order}gram

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
