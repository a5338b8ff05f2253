#!/usr/bin/env bash
# One GPU machine check, in one command (usage() below: --help prints it).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-gpu_check_out}
STEPS=${GPU_CHECK_STEPS:-20}
MAXTOK=${GPU_CHECK_MAX_TOKENS:-1024}
PROMPTS=${GPU_CHECK_PROMPTS:-ifeval/data/sampled_input_data.jsonl}
DRY=0 SETUP=1 RANDOM_W=0 ALLOW_CPU=0 MAKE_BUNDLE="" BUNDLE=""

usage() {
  cat <<'EOF_USAGE'
One GPU machine check, in one command (about 10 minutes on one recent GPU): setup, 20
training steps of SmolLM2-135M through scripts/sft.sh, IFEval on the course's 100-prompt
set at 1024 new tokens with vLLM, then one summary block (versions, precision, tokens/s,
the four IFEval metrics) that you can paste into an issue.

  bash scripts/gpu_check.sh                     # everything
  bash scripts/gpu_check.sh --dry_run           # print what would run, run nothing
  bash scripts/gpu_check.sh --skip_setup        # packages and assets already installed
  bash scripts/gpu_check.sh --random_weights    # SmolLM2-135M's shape with random weights
  bash scripts/gpu_check.sh --make_bundle DIR   # build the offline bundle (needs PyPI; DIR git-ignored, <= 64 MiB)
  bash scripts/gpu_check.sh --bundle DIR        # the check on a machine without network (docs/gpu_check.md)
(--dry-run, --skip-setup, --random-weights, --allow-cpu: the older spellings, still accepted)

Offline or without the model weights (no SmolLM2-135M/model.safetensors after setup),
it builds SmolLM2-135M's configuration with random weights (scripts/random_model.py):
speed, memory and precision paths are those of the real model, the scores are
meaningless and the summary says so. IFEval runs with --backend auto: vLLM where it is
installed and has kernels for the GPU, else transformers (the summary names the engine).

--bundle DIR (a folder from --make_bundle, carried to the machine): installs its wheels
into a temporary folder (pip --no-index --no-deps), builds the random-weight model from
its tokenizer, trains GPU_CHECK_STEPS steps through DeepSpeed ZeRO-2 when it imports, else
torchrun (DDP), measures --loss fused against --loss logits at 2048 tokens
(benchmarks/loss_step.py), answers and scores IFEval with --backend hf, and prints one
summary block; each stage has a time limit so the whole stays within 8 minutes.

Environment: GPU_CHECK_OUT [gpu_check_out] output folder (removed and rewritten each run);
  GPU_CHECK_STEPS [20]; GPU_CHECK_MAX_TOKENS [1024]; GPU_CHECK_PROMPTS [ifeval/data/sampled_input_data.jsonl];
  GPU_CHECK_LIMIT [all prompts]; GPU_CHECK_ENGINE [auto] (--bundle: deepspeed, torchrun or auto);
  GPU_CHECK_PYTHON_VERSION [3.12] (--make_bundle: CPython version of the GPU machine's wheels);
  GPU_CHECK_TINY=1 (a 2-layer random model: only for testing this script, with --allow_cpu, on a
  machine without GPU); PYTHON [python].
EOF_USAGE
}
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry_run|--dry-run) DRY=1 ;;
    --skip_setup|--skip-setup) SETUP=0 ;;
    --random_weights|--random-weights) RANDOM_W=1 ;;
    --allow_cpu|--allow-cpu) ALLOW_CPU=1 ;;  # testing only: run the plumbing without a GPU
    --make_bundle|--bundle)
      [[ $# -ge 2 && -n "$2" ]] || { echo "gpu_check.sh: $1 needs a folder (--help for usage)" >&2; exit 2; }
      if [[ $1 == --make_bundle ]]; then MAKE_BUNDLE=$2; else BUNDLE=$2; fi
      shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (--help for usage)" >&2; exit 2 ;;
  esac
  shift
done
if [[ -n "$MAKE_BUNDLE" ]]; then
  exec "$PY" scripts/gpu_bundle.py make "$MAKE_BUNDLE" --python_version "${GPU_CHECK_PYTHON_VERSION:-3.12}"
fi
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: GPU_CHECK_STEPS must be a positive integer" >&2; exit 2; }
[[ "$MAXTOK" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: GPU_CHECK_MAX_TOKENS must be a positive integer" >&2; exit 2; }

run() {  # print, then run unless --dry-run
  echo "+ $*"
  if [[ $DRY == 0 ]]; then "$@"; fi
}

if [[ -n "$BUNDLE" ]]; then
  ARGS=("$BUNDLE"); [[ $ALLOW_CPU == 1 ]] && ARGS+=(--allow_cpu); [[ $DRY == 1 ]] && ARGS+=(--dry_run)
  exec bash scripts/gpu_check_bundle.sh "${ARGS[@]}"
fi

HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then HAVE_GPU=1; fi
if [[ $HAVE_GPU == 0 && $ALLOW_CPU == 0 && $DRY == 0 ]]; then
  echo "gpu_check.sh: no GPU (nvidia-smi sees none). This check is for GPU machines; --dry-run shows its steps." >&2
  exit 1
fi
t_all=$(date +%s)

# 1. setup (packages: requirements-gpu.txt on a GPU machine; assets: model, NLTK data, prompts)
t0=$(date +%s)
if [[ $SETUP == 1 ]]; then
  run bash setup.sh || echo "[gpu_check] setup.sh failed (offline?); going on with what is installed"
fi
t_setup=$(( $(date +%s) - t0 ))

# 2. the model: the real weights, or SmolLM2-135M's shape with random weights
MODEL=SmolLM2-135M
NOTE=""
if [[ $RANDOM_W == 1 || ! -f SmolLM2-135M/model.safetensors || "${GPU_CHECK_TINY:-0}" == 1 ]]; then
  MODEL="$OUT/smollm2-random"
  NOTE="RANDOM WEIGHTS (SmolLM2-135M configuration): the IFEval scores below are meaningless; speed, memory and precision paths are the real model's."
  [[ "${GPU_CHECK_TINY:-0}" == 1 ]] && NOTE="$NOTE TINY 2-layer model (script test only)."
  TINY_ARG=(); [[ "${GPU_CHECK_TINY:-0}" == 1 ]] && TINY_ARG=(--tiny)
  run rm -rf "$OUT"
  run "$PY" scripts/random_model.py "$MODEL" "${TINY_ARG[@]}"
else
  run rm -rf "$OUT"
fi

# 3. training: 20 steps through scripts/sft.sh (the course's batch and length; DeepSpeed ZeRO-2)
DATA=smol-smoltalk-6k.json
[[ -f $DATA ]] || DATA=data/demo_sft.json
t0=$(date +%s)
SFT_ENV=(MODELPATH="$MODEL" DATAPATH="$DATA" OUTPUTPATH="$OUT/ckpt" RUNNAME=gpu_check SAVESTEPS=100000)
[[ "${GPU_CHECK_TINY:-0}" == 1 ]] && SFT_ENV+=(TOTALBSZ=2 BSZPERDEV=1 MAXLEN=256)
run env "${SFT_ENV[@]}" bash scripts/sft.sh --max_steps "$STEPS"
t_train=$(( $(date +%s) - t0 ))

# 4. IFEval on the trained checkpoint; --backend auto follows the one rule
#    (smolsft.generation.engines.pick_backend), and ifeval/run_info.json records what ran
LIMIT_ARGS=(); [[ -n "${GPU_CHECK_LIMIT:-}" ]] && LIMIT_ARGS=(--limit "$GPU_CHECK_LIMIT")
t0=$(date +%s)
IFEVAL=(bash ifeval/run.sh "$OUT/ckpt/gpu_check" "$OUT/ifeval" --input_data "$PROMPTS" --max_tokens "$MAXTOK"
        --backend auto "${LIMIT_ARGS[@]}")
echo "+ ${IFEVAL[*]}"
if [[ $DRY == 1 ]]; then echo "[gpu_check] dry run: nothing was run"; exit 0; fi
"${IFEVAL[@]}" 2>&1 | tee "$OUT/ifeval.log"
t_ifeval=$(( $(date +%s) - t0 ))

# 5. one summary block (scripts/gpu_check_summary.py: the trainer's files and ifeval/run_info.json)
"$PY" scripts/gpu_check_summary.py "$OUT" --ckpt "$OUT/ckpt/gpu_check" --times "$t_setup,$t_train,$t_ifeval" \
  --wall_s "$(( $(date +%s) - t_all ))" --note "$NOTE"
