#!/usr/bin/env bash
# FSDD connected digits (TIDIGITS style) with DeepSpeech2, staged like icefall's prepare.sh:
#   ./run.sh [--stage N] [--stop-stage N] [--fsdd DIR] [--model deepspeech2|las|transducer] [--conf FILE]
#            [--data DIR] [--exp DIR] [--set key=value ...] [--no-lm] [--lm-order N] [--workers N (prepare)]
#            [--extra-data DIR ... (more corpora for training)] [--init CKPT (training starts from its weights)]
#            [--device DEV (decoding; training reads train.device)]
# Stages (0, 1 and 4 skip themselves when their .done marker or output exists; delete it to redo the stage):
#   0 prepare   train / speaker-disjoint dev (theo) / official test, connected digits -> data/
#   1 train     asrkit train $conf -> $exp (resumes an interrupted run)
#   2 score     asrkit evaluate on dev and test -> $exp/{dev,test}.report.json, summary in $exp/scores.txt
#   3 sample    asrkit transcribe three test utterances
#   4 lm        word n-gram of the training transcripts -> $data/lm/train_<order>gram.bin
#               (needs `asrkit lm build` and KenLM's lmplz; skipped with a message otherwise or with --no-lm)
#   5 lm score  CTC beam search with that LM: alpha / beta tuned on dev (asrkit tune, alpha 0-2, beta 0-16;
#               kept in $exp/decode/lm_tune.json), asrkit evaluate on dev and test
#               -> $exp/decode/lm/<split>.{json,txt}, summary in $exp/scores_lm.txt
#               (skipped without stage 4's LM or with --no-lm; CTC models only)
# Defaults: --fsdd ../../../shared/data/fsdd, --model deepspeech2 (conf/<model>.toml, exp/<model>; --model names
# a model family, the old ds2 and rnnt still work), --data data, --lm-order 4. Stage 5's weights stay out of
# $exp/tune.json, so stages 2 and 3 still decode without the LM.
# Only the asrkit CLI is called. Run from anywhere; paths are relative to this folder.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../common.sh
. "$(dirname "${BASH_SOURCE[0]}")/../common.sh"  # shared options, helpers and stages; cd to this folder

fsdd=${FSDD_DIR:-../../../shared/data/fsdd}
lm_order=4
while [ $# -gt 0 ]; do
  case "$1" in
    --fsdd) fsdd=$2; shift 2 ;;
    *) common_option "$@"; shift "$nargs" ;;
  esac
done
check_model
exp=${exp:-exp/$model}
lm=$data/lm/train_${lm_order}gram

if run_stage 0; then
  if [ -f "$data/.done" ]; then log 0 "skip: $data/.done exists"; else
    log 0 "prepare FSDD connected digits from $fsdd"
    rc=0
    asrkit prepare fsdd "$fsdd" "$data" --connected --min-digits 1 --max-digits 7 --passes 2 --dev-speakers theo \
      --workers "$workers" || rc=$?
    ok_or_skipped "$rc" "$data/skipped.tsv"
    touch "$data/.done"
  fi
fi

if run_stage 1; then stage_train 1; fi

if run_stage 2; then
  log 2 "score dev and test"
  for split in dev test; do
    echo "$split: $(asrkit evaluate "$exp" "$data/$split.jsonl" --report "$exp/$split.report.json" --device "$device")"
  done | tee "$exp/scores.txt"
fi

if run_stage 3; then
  log 3 "transcribe three test utterances"
  mapfile -t wavs < <(head -n 3 "$data/test.jsonl" | sed 's/.*"audio_filepath": "\([^"]*\)".*/\1/')
  asrkit transcribe "$exp" --device "$device" "${wavs[@]}"
fi

if run_stage 4; then stage_lm 4 "$data/train.jsonl"; fi

if run_stage 5; then
  if [ "$use_lm" != true ]; then log 5 "skip: --no-lm"
  elif [ ! -f "$lm.bin" ]; then log 5 "skip: no LM at $lm.bin (stage 4 builds it)"
  else
    need_checkpoint 1
    lm_decoding 5 --alpha-range 0,2 --beta-range 0,16  # digit strings: the word bonus matters (RESULTS.md)
    if [ ${#lm_opts[@]} -gt 0 ]; then
      for s in dev test; do evaluate_split 5 lm "$s" "${lm_opts[@]}"; done
      write_scores 5 "$exp/scores_lm.txt" "$exp/decode/lm/dev.txt" "$exp/decode/lm/test.txt"
    fi
  fi
fi
