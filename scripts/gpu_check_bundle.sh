#!/usr/bin/env bash
# The GPU check on a machine without network, from a bundle (bash scripts/gpu_check.sh
# --bundle DIR runs this; docs/gpu_check.md): wheels -> temporary folder, random-weight
# SmolLM2-135M, GPU_CHECK_STEPS training steps (DeepSpeed ZeRO-2 when it imports, else
# torchrun / DDP), fused vs logits loss at 2048 tokens, IFEval with --backend hf, summary.
#
set -euo pipefail
usage() {
  cat <<'EOF_USAGE'
The GPU check on a machine without network, from a bundle (bash scripts/gpu_check.sh
--bundle DIR runs this; docs/gpu_check.md): wheels -> temporary folder, random-weight
SmolLM2-135M, GPU_CHECK_STEPS training steps (DeepSpeed ZeRO-2 when it imports, else
torchrun / DDP), fused vs logits loss at 2048 tokens, IFEval with --backend hf, summary.

  bash scripts/gpu_check_bundle.sh DIR [--allow_cpu] [--dry_run]

Stages run with time limits (seconds: install 60, model 45, train 150, loss benchmark 75,
IFEval 150; at most 8 minutes together) and the summary is printed even when one fails or
runs out of time; the exit status is then 1. --allow_cpu (tests only) runs the same
plumbing on the CPU with a 2-layer model, a few tokens and prompts (limits x4).
Environment: GPU_CHECK_OUT [gpu_check_out], GPU_CHECK_STEPS [20], GPU_CHECK_MAX_TOKENS [1024],
  GPU_CHECK_LIMIT [all 100 prompts], GPU_CHECK_ENGINE [auto | deepspeed | torchrun],
  GPU_CHECK_LIMIT_SCALE [1 on a GPU, 4 with --allow_cpu] (multiplies the stage limits), PYTHON [python].
EOF_USAGE
}
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY=${PYTHON:-python}
BUNDLE="" ALLOW_CPU=0 DRY=0
for a in "$@"; do
  case "$a" in
    -h|--help) usage; exit 0 ;;
    --allow_cpu|--allow-cpu) ALLOW_CPU=1 ;;
    --dry_run|--dry-run) DRY=1 ;;
    -*) echo "gpu_check_bundle.sh: unknown argument $a (--help for usage)" >&2; exit 2 ;;
    *) BUNDLE=$a ;;
  esac
done
[[ -n "$BUNDLE" ]] || { echo "gpu_check_bundle.sh: no bundle folder given (--help for usage)" >&2; exit 2; }
[[ -f "$BUNDLE/MANIFEST.json" ]] || { echo "[gpu_check] error: $BUNDLE/MANIFEST.json not found: build the bundle with bash scripts/gpu_check.sh --make_bundle $BUNDLE" >&2; exit 1; }
BUNDLE="$(cd "$BUNDLE" && pwd)"
OUT=${GPU_CHECK_OUT:-gpu_check_out}
STEPS=${GPU_CHECK_STEPS:-20}
MAXTOK=${GPU_CHECK_MAX_TOKENS:-1024}
ENGINE=${GPU_CHECK_ENGINE:-auto}
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || { echo "[gpu_check] error: GPU_CHECK_STEPS must be a positive integer" >&2; exit 2; }
[[ "$MAXTOK" =~ ^[1-9][0-9]*$ ]] || { echo "[gpu_check] error: GPU_CHECK_MAX_TOKENS must be a positive integer" >&2; exit 2; }
[[ "$ENGINE" =~ ^(auto|deepspeed|torchrun)$ ]] || { echo "[gpu_check] error: GPU_CHECK_ENGINE must be auto, deepspeed or torchrun (not $ENGINE)" >&2; exit 2; }

# GPUs torch can use and their training precision by the project's one rule
# (smolsft.hardware.rules.gpu_precision, not a copy of it): one torch import.
GPU_INFO=$("$PY" -c "import torch
from smolsft.hardware.probe import GPU
from smolsft.hardware.rules import gpu_precision
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
gpus = [GPU(i, f'GPU {i}', tuple(torch.cuda.get_device_capability(i)), None, '') for i in range(n)]
print(n, gpu_precision(gpus)[0] if gpus else 'none')")
read -r NGPU PREC_NAME <<< "$GPU_INFO"
if [[ $NGPU == 0 && $ALLOW_CPU == 0 ]]; then
  echo "[gpu_check] error: torch sees no usable GPU ($("$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)")); this check is for GPU machines (--allow_cpu runs its plumbing on the CPU, for tests)" >&2
  exit 1
fi
if [[ $NGPU -gt 0 ]]; then
  case "$PREC_NAME" in bf16) PREC=(--bf16 True) ;; fp16) PREC=(--fp16 True) ;; *) PREC=() ;; esac
  RANKS=$NGPU TINY=() BSZ=16 MAXLEN=2048 GEN=(--max_tokens "$MAXTOK" --batch_size 128) SHAPES=(1x2048 4x2048) BENCH_STEPS=3
  GA=$(( 128 / NGPU / BSZ )); (( GA >= 1 )) || GA=1
else  # --allow_cpu: the plumbing only, small enough for a test
  PREC=(--dataloader_pin_memory False) RANKS=1 TINY=(--tiny) BSZ=1 GA=2 MAXLEN=256
  GEN=(--max_tokens 8 --batch_size 4) SHAPES=(1x64 2x64) BENCH_STEPS=1
fi
LIMIT_SCALE=${GPU_CHECK_LIMIT_SCALE:-1}; [[ $NGPU == 0 ]] && LIMIT_SCALE=${GPU_CHECK_LIMIT_SCALE:-4}  # CPU tests: slow, not the check
[[ "$LIMIT_SCALE" =~ ^[1-9][0-9]*$ ]] || { echo "[gpu_check] error: GPU_CHECK_LIMIT_SCALE must be a positive integer" >&2; exit 2; }
LIMIT_ARGS=(); [[ -n "${GPU_CHECK_LIMIT:-}" ]] && LIMIT_ARGS=(--limit "$GPU_CHECK_LIMIT")
[[ $NGPU == 0 && -z "${GPU_CHECK_LIMIT:-}" ]] && LIMIT_ARGS=(--limit 2)

TARGET=$(mktemp -d)  # under $TMPDIR or /tmp
trap 'rm -rf "$TARGET"' EXIT
if [[ $DRY == 0 ]]; then
  rm -rf "$OUT"; mkdir -p "$OUT"; STAGES="$OUT/stages.tsv"; : > "$STAGES"
else
  STAGES=/dev/null
fi
FAILED=0

stage() {  # stage NAME LIMIT_S CMD...: run with a time limit, log to $OUT/NAME.log, record status and seconds
  local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
  echo "[gpu_check] $name (limit ${limit}s): $*"
  if [[ $DRY == 1 ]]; then printf '%s\t%s\t%s\n' "$name" dry 0 >> "$STAGES"; return 0; fi
  local t0=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local status=ok
  if [[ $rc == 124 || $rc == 137 ]]; then status=timeout; elif [[ $rc != 0 ]]; then status="failed($rc)"; fi
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$STAGES"
  if [[ $status != ok ]]; then
    FAILED=1
    echo "[gpu_check] $name: $status after $((SECONDS - t0))s; last lines of $OUT/$name.log:" >&2
    tail -n 15 "$OUT/$name.log" >&2 || true
  fi
  return 0
}

stage install 60 "$PY" scripts/gpu_bundle.py install "$BUNDLE" "$TARGET"
export PYTHONPATH="$TARGET:$REPO${PYTHONPATH:+:$PYTHONPATH}" NLTK_DATA="$BUNDLE/nltk_data"

MODEL="$OUT/smollm2-random"
stage model 45 "$PY" scripts/random_model.py "$MODEL" --tokenizer "$BUNDLE/tokenizer" "${TINY[@]}"

WHY=""
if [[ $ENGINE == auto ]]; then
  if WHY=$("$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__, 'imports')" 2>&1); then
    ENGINE=deepspeed
  else
    ENGINE=torchrun WHY="deepspeed does not import: $(printf '%s\n' "$WHY" | tail -n 1)"
  fi
else
  WHY="GPU_CHECK_ENGINE=$ENGINE"
fi
WHY=$(printf '%s\n' "$WHY" | tail -n 1)
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")
DATA=data/demo_sft.json; [[ -f smol-smoltalk-6k.json ]] && DATA=smol-smoltalk-6k.json
if [[ $ENGINE == deepspeed ]]; then
  LAUNCH=("$PY" -m deepspeed.launcher.runner --num_gpus "$RANKS" --master_port "$PORT" train_hw_parallel.py
          --deepspeed ds_configs/zero2_no_offload.json)
else
  LAUNCH=("$PY" -m torch.distributed.run --nproc_per_node "$RANKS" --master_port "$PORT" train_hw_parallel.py)
fi
echo "[gpu_check] training: $ENGINE ($WHY); $RANKS rank(s) x $BSZ x GA $GA, MAXLEN $MAXLEN, ${PREC[*]}"
[[ $DRY == 1 ]] || printf '%s\n' "$ENGINE" "$WHY" "$RANKS x $BSZ x GA $GA" "$MAXLEN" > "$OUT/engine.txt"
stage train 150 env OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${LAUNCH[@]}" --model_name_or_path "$MODEL" \
  --data_path "$DATA" --output_dir "$OUT/ckpt" --run_name gpu_check --max_steps "$STEPS" \
  --per_device_train_batch_size "$BSZ" --gradient_accumulation_steps "$GA" --learning_rate 2e-5 --warmup_steps 0.1 \
  --lr_scheduler_type cosine --weight_decay 0.0 --model_max_length "$MAXLEN" --max_rounds 5 \
  --train_sampling_strategy group_by_length --logging_steps 1 --save_strategy no --dataloader_num_workers 0 \
  --report_to none --data_cache_dir "$OUT/data_cache" "${PREC[@]}"

stage loss_benchmark 75 "$PY" benchmarks/loss_step.py --model "$MODEL" --shapes "${SHAPES[@]}" \
  --steps "$BENCH_STEPS" --json "$OUT/loss_step.json"

CKPT="$OUT/ckpt"; [[ -f "$CKPT/model.safetensors" ]] || CKPT="$MODEL"  # training failed: still test generation
stage ifeval 150 bash ifeval/run.sh "$CKPT" "$OUT/ifeval" --input_data "$BUNDLE/ifeval_data/sampled_input_data.jsonl" \
  --backend hf "${GEN[@]}" "${LIMIT_ARGS[@]}"

if [[ $DRY == 1 ]]; then echo "[gpu_check] dry run: nothing was run"; exit 0; fi
"$PY" scripts/gpu_check_summary.py "$OUT" --bundle "$BUNDLE" --wall_s "$SECONDS" | tee "$OUT/summary.txt"
exit $FAILED
