#!/usr/bin/env bash
# Training throughput of the DS2 reference (2 conv + 5 biGRU(768), 49 M parameters, bf16, 15 s utterances) on one
# GPU, for issue #7: the bare model step against asrkit end to end with the features made in the loader workers
# and on the device, at batch 64 and 256, then one batch-64 run with train.compile. About 6-8 minutes; ends with
# one table. Each run has its own time limit; a run that fails or times out is reported and the others go on.
#
# Written for a bare GPU machine with Python 3.12, torch and torchaudio installed but no package registry (the
# lent H200: torch 2.11, torchaudio 2.11, numpy, typer, sentencepiece, tensorboard; no soundfile, kenlm or
# pyctcdecode, which asrkit imports only where they are used). soundfile and its cffi come as wheels in .whl/,
# fetched beforehand on a machine with PyPI, from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
#
# (.whl/ is git-ignored; 1.6 MB.) Then, through the device tool, from the repository root:
#
#   run(command="bash bench/gpu_throughput.sh", carry=[".whl"], timeout_s=600)
#
# Figures and the full log come back in $OUT (throughput.jsonl, gpu_throughput.log). Elsewhere OUT defaults to
# /tmp/asrkit-gpu-throughput. PYTHON picks the interpreter (default python3); STEPS the timed steps per run (20).
# SMOKE=1 runs the same script on a CPU with the small preset and batches of 4 and 8 (a check of the script alone).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/asrkit-gpu-throughput}
PY=${PYTHON:-python3}
STEPS=${STEPS:-20}
SMOKE=${SMOKE:-0}
PRESET=ds2 SMALL=64 LARGE=256
[ "$SMOKE" = 1 ] && PRESET=small SMALL=4 LARGE=8
mkdir -p "$OUT"
LOG="$OUT/gpu_throughput.log"
JSON="$OUT/throughput.jsonl"
: >"$JSON"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

echo "== $(date -u +%FT%TZ) $(hostname) $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || nvidia-smi || true
df -h /dev/shm /tmp | sed 's/^/   /' || true  # the loader workers hand batches over in /dev/shm

if ! "$PY" -c "import soundfile" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/asrkit-site .whl/*.whl
  export PYTHONPATH="/tmp/asrkit-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SMOKE=$SMOKE "$PY" - <<'EOF'
import os, sys
import numpy, torch, torchaudio
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version()}), torchaudio {torchaudio.__version__}, numpy {numpy.__version__}")
try:
    import soundfile
    print(f"soundfile {soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__})")
except ImportError as err:
    sys.exit(f"soundfile missing ({err}): carry .whl (see the header of bench/gpu_throughput.sh)")
if torch.cuda.is_available():
    print(f"GPU {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
elif os.environ["SMOKE"] != "1":
    sys.exit("no CUDA device visible to torch")
import asrkit.train  # noqa: F401  (imports without kenlm / pyctcdecode)
EOF

failed=()
bench() {  # bench LIMIT_SECONDS NAME ARGS...: one bench/train_throughput.py run under a time limit
  local limit=$1 name=$2
  shift 2
  echo
  echo "== $name (limit ${limit} s): bench/train_throughput.py --preset $PRESET --steps $STEPS $*"
  local start=$SECONDS
  if ! timeout -k 15 "$limit" "$PY" bench/train_throughput.py --preset "$PRESET" --steps "$STEPS" --json "$JSON" "$@"; then
    echo "!! $name failed or ran past ${limit} s"
    failed+=("$name")
  fi
  echo "== $name took $((SECONDS - start)) s"
}

bench 150 "batch $SMALL" --batch "$SMALL" --modes workers,device
bench 210 "batch $LARGE" --batch "$LARGE" --modes workers,device
bench 100 "batch $SMALL, train.compile" --batch "$SMALL" --modes device --no-bare --set train.compile=true

echo
"$PY" - "$JSON" <<'EOF'
import json, sys
records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not records:
    sys.exit("no figures were written")
r0 = records[0]
bare = {r["batch"]: row["audio_s_per_s"] for r in records for row in r["rows"] if row["name"] == "bare model step"}
print(f"# {r0['device']}, torch {r0['torch']}, preset {r0['preset']} ({r0['params_m']} M parameters), "
      f"{r0['precision']}, {r0['seconds']:g} s utterances, {r0['workers']} loader workers")
print(f"{'batch':>5}  {'':36}{'audio s / s':>12}{'x bare':>8}  {'padding':>7}   peak memory")
for r in records:
    for row in r["rows"]:
        name = row["name"] + (" + compile" if r["compile"] else "")
        x_bare = row["audio_s_per_s"] / bare[r["batch"]] if r["batch"] in bare else None
        ratio = f"{x_bare:8.2f}" if x_bare is not None else f"{'-':>8}"
        print(f"{r['batch']:>5}  {name:36}{row['audio_s_per_s']:12.1f}{ratio}  {r['padding']:7.1%}   {row['memory']}")
print("reference (issue #7, H200, torch 2.11): bare step 3,424 audio-s/s at batch 64, 10,214 at batch 256; "
      "target: end to end >= 0.9 x bare")
EOF
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
