#!/usr/bin/env bash
# The best AN4 models so far (recipes/an4/RESULTS.md) in one command: trainings each started (--init) from the one
# before, then AN4's decode and score stages. Steps 1-3 give dev 6.07% WER greedy, 5.20% beam 8 + the fused 3-gram (88
# min in all on 2 idle cores, see below), steps 1, 2, 4, 5 also 5.20% with the 3-gram (7.23% greedy):
#   ./run_best.sh --librispeech-dir DIR [--an4-dir DIR] [--data DIR] [--ls-data DIR] [--exp-dir DIR]
#                 [--workers N] [--stage N] [--stop-stage N] [--set KEY=VALUE ...]
#   1 ctc        ./run.sh: AN4 Conformer-CTC (conf/conformer_ctc_cpu.toml, 40 epochs) -> EXP/conformer_ctc_cpu
#   2 joint      ../librispeech/run.sh: Mini LibriSpeech (train-clean-5 under DIR, 4 dev speakers held out) + AN4,
#                Conformer-CTC with characters from 1's best.pt (../librispeech/conf/conformer_ctc_char_init_cpu.toml,
#                12 epochs) -> EXP/conformer_ctc_char_init_an4_ls, then the mean of its last 5 epochs
#   3 transducer ./run.sh: AN4 Conformer-Transducer from 2's averaged encoder (conf/conformer_transducer_init_cpu.toml,
#                20 epochs) -> EXP/conformer_transducer_init_ls, then its LM, decode and score stages
#                (EXP/conformer_transducer_init_ls/scores.txt) and a greedy decode of best.pt
#   4 ls-transducer ../librispeech/run.sh: Mini LibriSpeech + AN4 Conformer-Transducer from 2's averaged encoder
#                (../librispeech/conf/conformer_transducer_init_cpu.toml, 7 epochs) -> EXP/conformer_transducer_init_an4_ls,
#                then the mean of its last 5 epochs
#   5 finetune   ./run.sh: the whole of 4's averaged model fine-tuned on AN4 (conf/conformer_transducer_ft_ls_cpu.toml,
#                10 epochs) -> EXP/conformer_transducer_ft_ls, then its LM, decode (the 3-gram fused into 8 beams,
#                weights tuned on dev) and score stages, and a greedy decode
# Defaults: --data data (AN4's manifests), --ls-data ../librispeech/data, --exp-dir exp (EXP), --workers 1 (the
# prepare and decode processes). --set goes to every training, e.g. --set train.num_workers=0: with
# OMP_NUM_THREADS=2 on an otherwise idle 2-core machine, 1.5x faster than the confs' one loader worker: steps 1-3
# then take 18 + 56 + 14 minutes. On one CPU core beside another training: about 45 + 89 + 23 + 155 + 12 minutes
# (steps 4-5 need only step 2's output: --stop-stage 2, then --stage 4, skips step 3). Every step resumes where it
# stopped when run again (each run.sh stage skips itself when its .done marker exists); --stage/--stop-stage pick
# steps. DIR is the folder that holds LibriSpeech/train-clean-5 (openslr.org/31's train-clean-5.tar.gz, extracted).
set -euo pipefail
self=$(realpath "${BASH_SOURCE[0]}")

ls_dir='' an4=() sets=() workers=1 stage=1 stop_stage=5 data='' ls_data='' exp_dir=''
usage() { sed -n '5,6p' "$self" | sed 's/^# \{0,2\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=${2:?--data needs a folder}; shift 2 ;;
    --ls-data) ls_data=${2:?--ls-data needs a folder}; shift 2 ;;
    --exp-dir) exp_dir=${2:?--exp-dir needs a folder}; shift 2 ;;
    --librispeech-dir) ls_dir=${2:?--librispeech-dir needs a folder}; shift 2 ;;
    --an4-dir) an4=(--an4-dir "${2:?--an4-dir needs a folder}"); shift 2 ;;
    --workers) workers=${2:?--workers needs a number}; shift 2 ;;
    --set) sets+=(--set "${2:?--set needs KEY=VALUE}"); shift 2 ;;
    --stage) stage=${2:?--stage needs 1-5}; shift 2 ;;
    --stop-stage) stop_stage=${2:?--stop-stage needs 1-5}; shift 2 ;;
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
ls_transducer=$exp_dir/conformer_transducer_init_an4_ls
finetuned=$exp_dir/conformer_transducer_ft_ls
need_ls() {
  if [ -z "$ls_dir" ]; then
    echo "run_best.sh: step $1 trains on Mini LibriSpeech: pass --librispeech-dir DIR (the folder holding" \
         "LibriSpeech/train-clean-5, from openslr.org/31)" >&2
    exit 2
  fi
}
need() { [ -f "$1" ] || { echo "run_best.sh: $1 missing: run step $2 first" >&2; exit 2; }; }

# on_librispeech MODEL CONF EXP INIT [OPTION...]: ../librispeech/run.sh's training on Mini LibriSpeech + AN4
# from INIT -> EXP, then the mean of EXP's last 5 epochs (EXP/averaged-last5.pt)
on_librispeech() {
  local model=$1 conf=$2 exp=$3 init=$4; shift 4
  (cd ../librispeech && ./run.sh --corpus-dir "$ls_dir" --subsets train-clean-5 --dev-speakers 4640,5789,2136,3664 \
    --model "$model" --conf "$conf" --data "$ls_data" --exp "$exp" --extra-data "$data" --init "$init" "$@" \
    --stop-stage 2 --workers "$workers" "${sets[@]}")
  if [ ! -f "$exp/averaged-last5.pt" ]; then asrkit average "$exp" --last 5 --out "$exp/averaged-last5.pt"; fi
}
# an4_transducer CONF EXP INIT: ./run.sh's AN4 transducer training from INIT -> EXP, its LM, decode and score
# stages, and a greedy decode of EXP/best.pt
an4_transducer() {
  local conf=$1 exp=$2 init=$3
  ./run.sh --model transducer --conf "$conf" --data "$data" --exp "$exp" --init "$init" --stage 2 \
    --workers "$workers" "${sets[@]}"
  asrkit evaluate "$exp/best.pt" "$data/dev.jsonl" --greedy --report "$exp/decode/best_greedy_dev.json" \
    --workers "$workers"
}

if step 1; then
  log 1 "AN4 Conformer-CTC -> $ctc"
  ./run.sh --model deepspeech2 --conf conf/conformer_ctc_cpu.toml --data "$data" --exp "$ctc" "${an4[@]}" \
    --stop-stage 2 --workers "$workers" "${sets[@]}"
fi
if step 2; then
  need_ls 2
  need "$ctc/best.pt" 1
  log 2 "Mini LibriSpeech + AN4 Conformer-CTC from $ctc/best.pt -> $joint"
  on_librispeech deepspeech2 conf/conformer_ctc_char_init_cpu.toml "$joint" "$ctc/best.pt"
fi
if step 3; then
  init=$joint/averaged-last5.pt
  need "$init" 2
  log 3 "AN4 Conformer-Transducer from $init -> $transducer"
  an4_transducer conf/conformer_transducer_init_cpu.toml "$transducer" "$init"
fi
if step 4; then
  need_ls 4
  init=$joint/averaged-last5.pt
  need "$init" 2
  log 4 "Mini LibriSpeech + AN4 Conformer-Transducer from $init -> $ls_transducer"
  on_librispeech transducer conf/conformer_transducer_init_cpu.toml "$ls_transducer" "$init" --set train.epochs=7
fi
if step 5; then
  init=$ls_transducer/averaged-last5.pt
  need "$init" 4
  log 5 "AN4 fine-tuning of $init -> $finetuned"
  an4_transducer conf/conformer_transducer_ft_ls_cpu.toml "$finetuned" "$init"
fi
