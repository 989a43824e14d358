#!/bin/bash
# One GPU run of every GPU figure of RESULTS.md: the GPU-only equality checks (benchmarks/gpu_checks.py), then the
# Step 1 and feature benchmarks; results (JSON and a log) under $OUT. For a machine that has torch (and maybe
# torchvision and transformers) but no internet: prepare here, in the ignored folder runs/,
#   pip download --no-deps -d runs/device-wheels transformers==5.24.0 tokenizers==0.23.3 safetensors==0.8.0 \
#       huggingface_hub==2.4.0 simplejpeg==1.9.0 av==18.1.0 torchvision==0.29.1
#   cp ../shared/data/clips/*.mp4 runs/clips/
# (about 63 MB), send runs/ along, and run `bash benchmarks/gpu_run.sh` there. The wheels are unpacked into
# $SITE (a new temporary folder unless given), ahead of the machine's own packages (its own torchvision is kept: it matches its torch).
# STEP1/FEAT/DEV/EXTRA select tiny shapes on a CPU for a dry run of this script.
cd "$(dirname "$0")/.." || exit 1  # the repository root
OUT=${OUT:-runs/gpu-results}; mkdir -p "$OUT"  # the device tool sets OUT
exec > >(tee -a "$OUT/device.log") 2>&1
STEP1=${STEP1:-internvl2-8b}; FEAT=${FEAT:-huge}; DEV=${DEV:-cuda}; EXTRA=${EXTRA:-}
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null; nproc; python -V
python -c "import torch, transformers; print('device env:', torch.__version__, transformers.__version__, torch.cuda.is_available())"
export SITE=${SITE:-$(mktemp -d)}  # where the carried wheels are unpacked
python - <<'PY'
import glob, importlib.util, os, zipfile
have_torchvision = importlib.util.find_spec("torchvision") is not None  # the machine's own matches its torch
for wheel in glob.glob("runs/device-wheels/*.whl"):
    if "torchvision" in wheel and have_torchvision:
        continue
    zipfile.ZipFile(wheel).extractall(os.environ["SITE"])
    print("extracted", wheel)
PY
export PYTHONPATH=$SITE:$PWD HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! python -c "import transformers, transformers.models.internvl, av, simplejpeg, PIL, torchvision; print('using transformers', transformers.__version__)"; then
  echo "carried transformers does not import here; using the machine's own"
  rm -rf $SITE/transformers* $SITE/tokenizers* $SITE/huggingface_hub* $SITE/safetensors*
  python -c "import transformers, av, simplejpeg; print('using transformers', transformers.__version__)"
fi
timeout 100 python benchmarks/gpu_checks.py --device $DEV --json $OUT/checks.json; echo "checks rc=$?"
timeout 330 python benchmarks/bench_step1.py --shape $STEP1 --skip-input --device $DEV $EXTRA --json $OUT/step1.json; echo "step1 rc=$?"
timeout 110 python benchmarks/bench_features.py --shape $FEAT --frames-from videos --clips runs/clips --device $DEV --json $OUT/features.json; echo "features rc=$?"
date -u
