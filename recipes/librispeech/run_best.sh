#!/usr/bin/env bash
# The best English model so far (RESULTS.md: 44.38% Mini LibriSpeech dev WER with the fused Gutenberg 4-gram, 9.83%
# on AN4 dev) in one command, on a fresh machine: five trainings, each started (--init) from the one before, then
# the LM, the tuning of its weights on dev and the decodes. Every step resumes where it stopped when run again.
#   ./run_best.sh --librispeech-dir DIR (--gutenberg SRC | --lm FILE) [--data DIR] [--an4-data DIR] [--exp-dir DIR]
#                 [--lm-dir DIR] [--an4-dir DIR] [--workers N] [--stage N] [--stop-stage N] [--set KEY=VALUE ...]
#   1 an4-ctc    ../an4/run_best.sh's step 1: AN4 (prepared into --an4-data) Conformer-CTC -> EXP/conformer_ctc_cpu
#   2 joint-ctc  its step 2: Mini LibriSpeech (train-clean-5 under DIR, speakers 4640, 5789, 2136 and 3664 held out
#                as dev) + AN4 Conformer-CTC from 1 -> EXP/conformer_ctc_char_init_an4_ls, averaged-last5.pt
#   3 transducer its step 4: Mini LibriSpeech + AN4 Conformer-Transducer from 2's average (7 epochs)
#                -> EXP/conformer_transducer_init_an4_ls, averaged-last5.pt
#   4 cycle2     a second cosine cycle from 3's average (conf/conformer_transducer_cont_cpu.toml, 4 epochs)
#                -> EXP/conformer_transducer_cont_an4_ls, averaged-last4.pt
#   5 cycle3     a third one from 4's average (conf/conformer_transducer_cont2_cpu.toml, 10 epochs)
#                -> EXP/conformer_transducer_cont2_an4_ls, averaged-last5.pt: the model (MODEL below)
#   6 lm         local/make_lm_text.sh SRC LMDIR DATA/dev.jsonl: Project Gutenberg books (SRC: the bare git
#                directory of rcdm-uga/Gutenberg_Text or a folder of its .txt books) without the dev chapters' text
#                -> LMDIR/books_nodev_4gram.bin (LMDIR: --lm-dir, default DATA/lm); skipped with --lm FILE
#   7 decode     MODEL on Mini LibriSpeech dev and AN4 dev with 8 beams, no LM; the LM's weight and word bonus
#                tuned on Mini LibriSpeech dev (asrkit tune, 9 settings) -> MODEL's tune.json, which transcribe and
#                evaluate then read; Mini LibriSpeech dev with the fused LM -> EXP/conformer_transducer_cont2_an4_ls/
#                decode/*.{json,txt} and scores.txt
# Defaults: --data data (Mini LibriSpeech's manifests), --an4-data ../an4/data, --exp-dir exp (EXP), --workers 1
# (prepare and decode processes). --set goes to every training. On an otherwise idle 2-core machine give
# OMP_NUM_THREADS=2 and --set train.num_workers=0 (1.5-1.8x faster than the confs' one loader worker). The runs
# behind RESULTS.md took 45 + 89 + 155 + 69 minutes on one core beside another training, then 123 minutes on two
# (9 of step 5's 10 epochs; this script runs all 10 and averages epochs 6-10), plus ~45 minutes for the LM and
# 20 for step 7: a night on 2 cores. --stage/--stop-stage pick steps; a step whose input is missing says which
# step makes it.
set -euo pipefail
self=$(realpath "${BASH_SOURCE[0]}")

ls_dir='' an4=() sets=() workers=1 stage=1 stop_stage=7 data='' an4_data='' exp_dir='' gutenberg='' lm='' lm_dir=''
usage() { sed -n '5,6p' "$self" | sed 's/^# \{0,2\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --librispeech-dir) ls_dir=${2:?--librispeech-dir needs a folder}; shift 2 ;;
    --gutenberg) gutenberg=${2:?--gutenberg needs a git directory or folder}; shift 2 ;;
    --lm) lm=${2:?--lm needs a KenLM file}; shift 2 ;;
    --lm-dir) lm_dir=${2:?--lm-dir needs a folder}; shift 2 ;;
    --data) data=${2:?--data needs a folder}; shift 2 ;;
    --an4-data) an4_data=${2:?--an4-data needs a folder}; shift 2 ;;
    --exp-dir) exp_dir=${2:?--exp-dir needs a folder}; shift 2 ;;
    --an4-dir) an4=(--an4-dir "${2:?--an4-dir needs a folder}"); shift 2 ;;
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --set) sets+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --stage) stage=${2:?--stage needs 1-7}; shift 2 ;;
    --stop-stage) stop_stage=${2:?--stop-stage needs 1-7}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_best.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
log() { echo "$(date '+%F %T') [step $1] $2"; }
step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }
die() { echo "run_best.sh: $*" >&2; exit 2; }
need() { [ -f "$1" ] || die "$1 missing: run step $2 first"; }

# every path absolute: the options' relative to where run_best.sh was called from, the defaults' to this folder
abs() { [ -z "$1" ] || realpath -m "$1"; }
ls_dir=$(abs "$ls_dir") data=$(abs "$data") an4_data=$(abs "$an4_data") exp_dir=$(abs "$exp_dir")
gutenberg=$(abs "$gutenberg") lm=$(abs "$lm") lm_dir=$(abs "$lm_dir")
[ ${#an4[@]} -eq 0 ] || an4=(--an4-dir "$(abs "${an4[1]}")")
cd "$(dirname "$self")"
data=${data:-$PWD/data} an4_data=${an4_data:-$(realpath -m ../an4/data)} exp_dir=${exp_dir:-$PWD/exp}
lm_dir=${lm_dir:-$data/lm} lm=${lm:-$lm_dir/books_nodev_4gram.bin}
joint=$exp_dir/conformer_ctc_char_init_an4_ls
cycle1=$exp_dir/conformer_transducer_init_an4_ls
cycle2=$exp_dir/conformer_transducer_cont_an4_ls
cycle3=$exp_dir/conformer_transducer_cont2_an4_ls
model=$cycle3/averaged-last5.pt
if [ -z "$ls_dir" ] && { step 2 || step 3 || step 4 || step 5; }; then
  die "steps 2-5 train on Mini LibriSpeech: pass --librispeech-dir DIR (the folder holding LibriSpeech/train-clean-5," \
      "from openslr.org/31)"
fi

# an4_step N: ../an4/run_best.sh's step N with this script's folders and options
an4_step() {
  local ls=()
  [ -z "$ls_dir" ] || ls=(--librispeech-dir "$ls_dir")
  ../an4/run_best.sh "${ls[@]}" --data "$an4_data" --ls-data "$data" --exp-dir "$exp_dir" \
    "${an4[@]}" --workers "$workers" --stage "$1" --stop-stage "$1" "${sets[@]}"
}
# cycle CONF EXP INIT K: ./run.sh's Mini LibriSpeech + AN4 transducer training from INIT -> EXP, then the mean of
# its last K epochs (EXP/averaged-lastK.pt)
cycle() {
  local conf=$1 exp=$2 init=$3 k=$4
  ./run.sh --corpus-dir "$ls_dir" --subsets train-clean-5 --dev-speakers 4640,5789,2136,3664 --model transducer \
    --conf "$conf" --data "$data" --exp "$exp" --extra-data "$an4_data" --init "$init" --stage 2 --stop-stage 2 \
    --workers "$workers" "${sets[@]}"
  if [ ! -f "$exp/averaged-last$k.pt" ]; then asrkit average "$exp" --last "$k" --out "$exp/averaged-last$k.pt"; fi
}
# evaluate NAME MANIFEST [OPTION...]: asrkit evaluate of the model on MANIFEST -> $cycle3/decode/NAME.json and
# .txt (its WER line); skipped once the .txt exists
evaluate() {
  local name=$1 manifest=$2 out=$cycle3/decode/$1; shift 2
  if [ -f "$out.txt" ]; then log 7 "skip: $out.txt exists"; return 0; fi
  need "$manifest" "1 or 2 (the manifests)"
  log 7 "evaluate $model on $manifest ($name) -> $out.json"
  mkdir -p "$cycle3/decode"
  asrkit evaluate "$model" "$manifest" --report "$out.json" --workers "$workers" "$@" > "$out.tmp"
  cat "$out.tmp"
  mv "$out.tmp" "$out.txt"
}

if step 1; then log 1 "AN4 Conformer-CTC"; an4_step 1; fi
if step 2; then log 2 "Mini LibriSpeech + AN4 Conformer-CTC"; an4_step 2; fi
if step 3; then log 3 "Mini LibriSpeech + AN4 Conformer-Transducer, first cycle"; an4_step 4; fi
if step 4; then
  need "$cycle1/averaged-last5.pt" 3
  log 4 "second cycle from $cycle1/averaged-last5.pt -> $cycle2"
  cycle conf/conformer_transducer_cont_cpu.toml "$cycle2" "$cycle1/averaged-last5.pt" 4
fi
if step 5; then
  need "$cycle2/averaged-last4.pt" 4
  log 5 "third cycle from $cycle2/averaged-last4.pt -> $cycle3"
  cycle conf/conformer_transducer_cont2_cpu.toml "$cycle3" "$cycle2/averaged-last4.pt" 5
fi
if step 6; then
  if [ -f "$lm" ]; then log 6 "skip: $lm exists"
  elif [ -z "$gutenberg" ]; then
    die "step 6 builds the LM from Project Gutenberg books: pass --gutenberg SRC (a bare git directory of" \
        "rcdm-uga/Gutenberg_Text or a folder of .txt books, see local/make_lm_text.sh) or --lm FILE (a KenLM model)"
  else
    need "$data/dev.jsonl" 2
    log 6 "4-gram of the books in $gutenberg without the dev chapters -> $lm_dir"
    bash local/make_lm_text.sh "$gutenberg" "$lm_dir" "$data/dev.jsonl"
  fi
fi
if step 7; then
  need "$model" 5
  # without the LM first: once tune.json lies beside the model, evaluate reads it
  evaluate beam8_dev "$data/dev.jsonl" --beam-size 8
  evaluate beam8_an4_dev "$an4_data/dev.jsonl" --beam-size 8
  if [ -f "$cycle3/tune.json" ]; then log 7 "skip: $cycle3/tune.json exists"; else
    need "$lm" 6
    log 7 "tune the fusion of $lm on $data/dev.jsonl -> $cycle3/tune.json"
    asrkit tune "$model" "$data/dev.jsonl" --lm "$lm" --weight-range 0.4,0.8 --bonus-range 1.5,2.5 --steps 3 \
      --beam-size 8 --no-progress
  fi
  evaluate lm_dev "$data/dev.jsonl"
  log 7 "WER / CER -> $cycle3/scores.txt"
  for name in beam8_dev beam8_an4_dev lm_dev; do echo "$name: $(cat "$cycle3/decode/$name.txt")"; done \
    | tee "$cycle3/scores.txt"
fi
