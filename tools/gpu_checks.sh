#!/usr/bin/env bash
# The GPU figures that issues 4 and 6 ask for, in one run (a few minutes on one H100/H200):
#   ReID train step, ViT-B/16 at 256x128, batch 64, bf16: eager and torch.compile (images/s, MFU)
#   ReID feature extraction, batch 256, bf16; ranking + metrics, 10,000 x 100,000 x 768 on the GPU
#   BBDM (configs/bbdm/hoss.yml): training pairs/s and MFU (eager and compiled), generation seconds per chip
#     (BBDM.SAMPLE_PRECISION fp32, as tools/generate_pseudo_sar.py samples by default, and bf16)
#   the CUDA-only tests (tests/test_bbdm.py)
#
#   tools/gpu_checks.sh [OUT_DIR]          JSON per figure and a log in OUT_DIR (default gpu_figures/)
#   QUICK=1 tools/gpu_checks.sh [OUT_DIR]  the same commands, tiny and on the CPU: checks the script itself
#
# Every check runs even if an earlier one fails; the exit status says whether all passed.
#
# Python: $PYTHON, else the README's .venv when present, else python3. When the requirements do not import, they
# are installed from requirements.txt (the pinned torch 2.14.1 is a CUDA 13.0 build: it needs an NVIDIA driver
# >= 580). Offline, for a pure-Python requirement missing from a preinstalled image (yacs on the project's H200
# image), download its wheel where pip works (`pip download --no-deps -d .whl yacs==0.1.8`), take .whl along,
# and start with
#   pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_figures}
mkdir -p "$out"
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON; elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
export PYTHONUNBUFFERED=1
if ! "$py" -c "import torch, torchvision, timm, yacs, cv2, tqdm" 2>/dev/null; then
    echo "requirements missing for $py: installing requirements.txt"
    "$py" -m pip install -q -r requirements.txt || { echo "cannot install requirements.txt (offline?): see the header"; exit 2; }
fi

if [[ "${QUICK:-0}" == 1 ]]; then
    device=cpu
    reid=(--batch 8 --steps 1 --warmup 0)
    infer=(--batch 2 --steps 1 --warmup 0)
    evals=(--num-query 100 --num-gallery 1000)
    bbdm=(--pairs 1 --steps 1 --warmup 0)
    tiny=(MODEL.EMBED_DIM 64 MODEL.DEPTH 2 MODEL.NUM_HEADS 2)
    bbdm_tiny=(BBDM.BASE_CHANNELS 8 BBDM.CHANNEL_MULT "[1,2]" BBDM.ATTENTION_LEVELS "[1]" BBDM.HEAD_CHANNELS 8 BBDM.SAMPLE_STEPS 2
               TEST.FUSION.NUM_SAMPLES 1)
else
    device=cuda
    reid=(--batch 64 --steps 20 --warmup 5)
    infer=(--batch 256 --steps 20 --warmup 5)
    evals=(--num-query 10000 --num-gallery 100000)
    bbdm=(--pairs 16 --steps 10 --warmup 3)
    tiny=()
    bbdm_tiny=()
fi

failed=()
check() {  # check NAME COMMAND...: run, keep its output in the log, note a failure and go on
    local name=$1
    shift
    echo "=== $name: $*" | tee -a "$out/log.txt"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$out/log.txt"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s" | tee -a "$out/log.txt"
    ((status == 0)) || failed+=("$name")
}

: >"$out/log.txt"
check environment "$py" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__,
  'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
check train_bf16 "$py" tools/benchmark.py --mode train "${reid[@]}" --json "$out/train_bf16.json" \
    MODEL.DEVICE $device SOLVER.AMP bf16 "${tiny[@]}"
check train_bf16_compile "$py" tools/benchmark.py --mode train "${reid[@]}" --compile \
    --json "$out/train_bf16_compile.json" MODEL.DEVICE $device SOLVER.AMP bf16 "${tiny[@]}"
check infer_bf16 "$py" tools/benchmark.py --mode infer "${infer[@]}" --json "$out/infer_bf16.json" \
    MODEL.DEVICE $device SOLVER.AMP bf16 "${tiny[@]}"
check eval "$py" tools/benchmark.py --mode eval "${evals[@]}" --json "$out/eval.json" MODEL.DEVICE $device
check bbdm_train "$py" tools/benchmark_bbdm.py --config_file configs/bbdm/hoss.yml --mode train "${bbdm[@]}" \
    --json "$out/bbdm_train.json" MODEL.DEVICE $device "${bbdm_tiny[@]}"
check bbdm_train_compile "$py" tools/benchmark_bbdm.py --config_file configs/bbdm/hoss.yml --mode train "${bbdm[@]}" \
    --json "$out/bbdm_train_compile.json" MODEL.DEVICE $device MODEL.COMPILE True "${bbdm_tiny[@]}"
check bbdm_sample "$py" tools/benchmark_bbdm.py --config_file configs/bbdm/hoss.yml --mode sample "${bbdm[@]}" \
    --json "$out/bbdm_sample.json" MODEL.DEVICE $device "${bbdm_tiny[@]}"
check bbdm_sample_bf16 "$py" tools/benchmark_bbdm.py --config_file configs/bbdm/hoss.yml --mode sample "${bbdm[@]}" \
    --json "$out/bbdm_sample_bf16.json" MODEL.DEVICE $device BBDM.SAMPLE_PRECISION bf16 "${bbdm_tiny[@]}"
check cuda_tests "$py" -m pytest -q -rs tests/test_bbdm.py -k cuda

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}" | tee -a "$out/log.txt"
    exit 1
fi
echo "all checks passed; figures in $out/" | tee -a "$out/log.txt"
