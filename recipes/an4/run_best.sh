#!/usr/bin/env bash
# The best AN4 model so far (dev 6.07% WER greedy, recipes/an4/RESULTS.md) in one command: three trainings,
# each started (--init) from the encoder of the one before, then AN4's decode and score stages:
#   ./run_best.sh --librispeech-dir DIR [--an4-dir DIR] [--data DIR] [--ls-data DIR] [--exp-dir DIR]
#                 [--workers N] [--stage N] [--stop-stage N]
#   1 ctc        ./run.sh: AN4 Conformer-CTC (conf/conformer_ctc_cpu.toml, 40 epochs) -> EXP/conformer_ctc_cpu
#   2 joint      ../librispeech/run.sh: Mini LibriSpeech (train-clean-5 under DIR, 4 dev speakers held out) + AN4,
#                Conformer-CTC with characters from 1's best.pt (../librispeech/conf/conformer_ctc_char_init_cpu.toml,
#                12 epochs) -> EXP/conformer_ctc_char_init_an4_ls, then the mean of its last 5 epochs
#   3 transducer ./run.sh: AN4 Conformer-Transducer from 2's averaged encoder (conf/conformer_transducer_init_cpu.toml,
#                20 epochs) -> EXP/conformer_transducer_init_ls, then its LM, decode and score stages
#                (EXP/conformer_transducer_init_ls/scores.txt) and a greedy decode of best.pt
# Defaults: --data data (AN4's manifests), --ls-data ../librispeech/data, --exp-dir exp (EXP), --workers 1.
# On one CPU core: about 45 + 89 + 23 minutes. Every step resumes where it stopped when run again (each run.sh
# stage skips itself when its .done marker exists); --stage/--stop-stage pick steps. DIR is the folder that
# holds LibriSpeech/train-clean-5 (openslr.org/31's train-clean-5.tar.gz, extracted).
set -euo pipefail
self=$(realpath "${BASH_SOURCE[0]}")

ls_dir='' an4=() workers=1 stage=1 stop_stage=3 data='' ls_data='' exp_dir=''
usage() { sed -n '4,5p' "$self" | sed 's/^# \{0,2\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=${2:?--data needs a folder}; shift 2 ;;
    --ls-data) ls_data=${2:?--ls-data needs a folder}; shift 2 ;;
    --exp-dir) exp_dir=${2:?--exp-dir needs a folder}; shift 2 ;;
    --librispeech-dir) ls_dir=${2:?--librispeech-dir needs a folder}; shift 2 ;;
    --an4-dir) an4=(--an4-dir "${2:?--an4-dir needs a folder}"); shift 2 ;;
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --stage) stage=${2:?--stage needs 1, 2 or 3}; shift 2 ;;
    --stop-stage) stop_stage=${2:?--stop-stage needs 1, 2 or 3}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_best.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
log() { echo "$(date '+%F %T') [step $1] $2"; }
step() { [ "$stage" -le "$1" ] && [ "$stop_stage" -ge "$1" ]; }

# every path absolute (step 2 runs in ../librispeech): the options' relative to where run_best.sh was called
# from, the defaults' to this folder
abs() { [ -z "$1" ] || realpath -m "$1"; }
ls_dir=$(abs "$ls_dir") data=$(abs "$data") ls_data=$(abs "$ls_data") exp_dir=$(abs "$exp_dir")
[ ${#an4[@]} -eq 0 ] || an4=(--an4-dir "$(abs "${an4[1]}")")
cd "$(dirname "$self")"
data=${data:-$PWD/data} ls_data=${ls_data:-$(realpath -m ../librispeech/data)} exp_dir=${exp_dir:-$PWD/exp}
ctc=$exp_dir/conformer_ctc_cpu
joint=$exp_dir/conformer_ctc_char_init_an4_ls
transducer=$exp_dir/conformer_transducer_init_ls

if step 1; then
  log 1 "AN4 Conformer-CTC -> $ctc"
  ./run.sh --model deepspeech2 --conf conf/conformer_ctc_cpu.toml --data "$data" --exp "$ctc" "${an4[@]}" \
    --stop-stage 2 --workers "$workers"
fi
if step 2; then
  if [ -z "$ls_dir" ]; then
    echo "run_best.sh: step 2 trains on Mini LibriSpeech: pass --librispeech-dir DIR (the folder holding" \
         "LibriSpeech/train-clean-5, from openslr.org/31)" >&2
    exit 2
  fi
  [ -f "$ctc/best.pt" ] || { echo "run_best.sh: $ctc/best.pt missing: run step 1 first" >&2; exit 2; }
  log 2 "Mini LibriSpeech + AN4 Conformer-CTC from $ctc/best.pt -> $joint"
  (cd ../librispeech && ./run.sh --corpus-dir "$ls_dir" --subsets train-clean-5 --dev-speakers 4640,5789,2136,3664 \
    --model deepspeech2 --conf conf/conformer_ctc_char_init_cpu.toml --data "$ls_data" --exp "$joint" \
    --extra-data "$data" --init "$ctc/best.pt" --stop-stage 2 --workers "$workers")
  if [ ! -f "$joint/averaged-last5.pt" ]; then asrkit average "$joint" --last 5 --out "$joint/averaged-last5.pt"; fi
fi
if step 3; then
  init=$joint/averaged-last5.pt
  [ -f "$init" ] || { echo "run_best.sh: $init missing: run step 2 first" >&2; exit 2; }
  log 3 "AN4 Conformer-Transducer from $init -> $transducer"
  ./run.sh --model transducer --conf conf/conformer_transducer_init_cpu.toml --data "$data" --exp "$transducer" \
    --init "$init" --stage 2 --workers "$workers"
  asrkit evaluate "$transducer/best.pt" "$data/dev.jsonl" --greedy --report "$transducer/decode/best_greedy_dev.json" \
    --workers "$workers"
fi
