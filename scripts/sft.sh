#!/usr/bin/env bash
# Supervised fine-tuning (Part 6) through DeepSpeed ZeRO-2: train_hw_parallel.py on
# every GPU of this machine, or on the CPU when there is none.
#
#   bash scripts/sft.sh                                  # the course run: SmolLM2-135M, 3 epochs
#   bash scripts/sft.sh --max_steps 10                   # extra arguments go last and win
#   MODELPATH=SmolLM2-135M DATAPATH=data/demo_sft.json OUTPUTPATH=ckpt RUNNAME=demo \
#     TOTALBSZ=16 BSZPERDEV=4 bash scripts/sft.sh --num_train_epochs 1 --model_max_length 1024
#
# Environment (defaults in brackets):
#   MODELPATH [SmolLM2-135M]   model folder (relative to here or to the repository) or hub id
#   DATAPATH  [smol-smoltalk-6k.json]  .json/.jsonl file, folder of them, or hub dataset id
#   OUTPUTPATH [ckpt], RUNNAME [HW2]   the run writes OUTPUTPATH/RUNNAME; rerunning resumes it
#   TOTALBSZ  [128]            samples per optimizer step over all devices
#   BSZPERDEV [16 on GPU, 4 on CPU]    samples per device per micro-step
#                              gradient accumulation = TOTALBSZ / devices / BSZPERDEV
#                              11 GB GPU (2080 Ti, fp16) at MAXLEN 2048: BSZPERDEV=4 (2 with --loss logits);
#                              estimated from bytes measured on CPU, not on a GPU (README "Training memory")
#   EPOCHS [3], LR [2e-5], WARMUP [0.1], MAXLEN [2048], MAXROUNDS [5], SAVESTEPS [200]
#                              (WARMUP goes to --warmup_steps: below 1 it is a share of the steps)
#   DS_CONFIG [ds_configs/zero2_no_offload.json]  (scripts/sft_offload.sh: optimizer on CPU)
#   HOSTFILE                   DeepSpeed hostfile for several nodes ("host slots=N" lines)
#   NUM_GPUS                   use this many GPUs instead of all that nvidia-smi lists
#   CPU_RANKS [2 when 2+ cores]  processes on a machine without GPU (each gets cores/CPU_RANKS threads)
#   PRECISION [auto]           without GPU: auto = bf16 where the CPU has bf16 arithmetic (AVX512-BF16,
#                              AMX), else fp32; fp32 or bf16 force one (train_hw_parallel.py --precision)
#   SFT_DRY_RUN=1              print the launch command and exit
#
# Hardware: bf16 on GPUs of compute capability 8.0+ (Ampere and newer), fp16 on older ones
# (T4, 2080 Ti), flash-attention when the flash_attn package imports there; without GPU,
# bf16 or fp32 (PRECISION) on DeepSpeed's CPU accelerator (gloo). W&B logging only when WANDB_API_KEY or
# WANDB_MODE is set; otherwise the console.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"

MODELPATH="${MODELPATH:-SmolLM2-135M}"
DATAPATH="${DATAPATH:-smol-smoltalk-6k.json}"
OUTPUTPATH="${OUTPUTPATH:-ckpt}"
RUNNAME="${RUNNAME:-HW2}"
TOTALBSZ="${TOTALBSZ:-128}"
EPOCHS="${EPOCHS:-3}"
LR="${LR:-2e-5}"
WARMUP="${WARMUP:-0.1}"
MAXLEN="${MAXLEN:-2048}"
MAXROUNDS="${MAXROUNDS:-5}"
SAVESTEPS="${SAVESTEPS:-200}"
DS_CONFIG="${DS_CONFIG:-$REPO/ds_configs/zero2_no_offload.json}"

# A relative data path that is not under the current folder may be the repository's.
if [[ ! -e "$DATAPATH" && -e "$REPO/$DATAPATH" ]]; then DATAPATH="$REPO/$DATAPATH"; fi

# ---------------------------------------------------------------- hardware
GPU_CAPS=""
if command -v nvidia-smi >/dev/null 2>&1; then
    GPU_CAPS="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true)"
fi
NGPU=$(printf '%s\n' "$GPU_CAPS" | grep -c '[0-9]' || true)
NGPU="${NUM_GPUS:-$NGPU}"
HW_ARGS=()
LAUNCH=()
if [[ "$NGPU" -gt 0 ]]; then
    MIN_MAJOR=$(printf '%s\n' "$GPU_CAPS" | grep '[0-9]' | head -n "$NGPU" | cut -d. -f1 | sort -n | head -n1)
    if [[ "${MIN_MAJOR:-0}" -ge 8 ]]; then PREC=bf16; HW_ARGS+=(--bf16 True); else PREC=fp16; HW_ARGS+=(--fp16 True); fi
    # flash-attention 2 needs Ampere+ and its package; importing it proves the build matches torch.
    if [[ "${MIN_MAJOR:-0}" -ge 8 ]] && "$PYTHON" -c "import flash_attn" >/dev/null 2>&1; then
        HW_ARGS+=(--flash_attn True); ATTN=flash_attention_2
    else
        ATTN=sdpa
    fi
    BSZPERDEV="${BSZPERDEV:-16}"
    NDEV="$NGPU"
    DEVICE="$NGPU GPU(s), $PREC, $ATTN"
    LAUNCH=(--num_gpus "$NGPU")
else
    # No GPU: DeepSpeed's CPU accelerator runs each rank as a process (gloo). --num_gpus
    # sets the number of ranks; the cores are shared out so ranks do not oversubscribe.
    CORES=$("$PYTHON" -c "import os; print(len(os.sched_getaffinity(0)))")
    CPU_RANKS="${CPU_RANKS:-$(( CORES >= 2 ? 2 : 1 ))}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( CORES / CPU_RANKS > 0 ? CORES / CPU_RANKS : 1 ))}"
    BSZPERDEV="${BSZPERDEV:-4}"
    NDEV="$CPU_RANKS"
    # -- CPU precision (issue 24): resolved here once, so the launch line names what trains.
    PREC="$(cd "$REPO" && "$PYTHON" -m cpu_precision "${PRECISION:-auto}")"
    HW_ARGS+=(--precision "$PREC")
    # --
    DEVICE="CPU, $CPU_RANKS rank(s) x $OMP_NUM_THREADS thread(s), $PREC, sdpa"
    HW_ARGS+=(--dataloader_pin_memory False)
    LAUNCH=(--num_gpus "$CPU_RANKS")
fi
if [[ -n "${HOSTFILE:-}" ]]; then
    # Several nodes: every "host slots=N" line contributes N devices.
    NDEV=$(awk '/slots=/{split($0, a, "slots="); n += a[2]} END {print n + 0}' "$HOSTFILE")
    LAUNCH=(--hostfile "$HOSTFILE")
    DEVICE="$DEVICE; $NDEV devices from $HOSTFILE"
fi

if (( TOTALBSZ % (NDEV * BSZPERDEV) != 0 )); then
    echo "sft.sh: TOTALBSZ=$TOTALBSZ is not a multiple of devices ($NDEV) x BSZPERDEV ($BSZPERDEV)" >&2
    exit 2
fi
GA=$(( TOTALBSZ / NDEV / BSZPERDEV ))

if [[ -n "${WANDB_API_KEY:-}" || -n "${WANDB_MODE:-}" ]]; then
    REPORT=wandb
else
    REPORT=none
    echo "sft.sh: W&B not configured (set WANDB_API_KEY or WANDB_MODE to use it); logging to the console"
fi

MASTER_PORT="${MASTER_PORT:-$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")}"

CMD=("$PYTHON" -u -m deepspeed.launcher.runner "${LAUNCH[@]}" --master_port "$MASTER_PORT"
    "$REPO/train_hw_parallel.py"
    --deepspeed "$DS_CONFIG"
    --model_name_or_path "$MODELPATH"
    --data_path "$DATAPATH"
    --output_dir "$OUTPUTPATH/$RUNNAME"
    --run_name "$RUNNAME"
    --num_train_epochs "$EPOCHS"
    --per_device_train_batch_size "$BSZPERDEV"
    --gradient_accumulation_steps "$GA"
    --learning_rate "$LR"
    --warmup_steps "$WARMUP"
    --lr_scheduler_type cosine
    --weight_decay 0.0
    --model_max_length "$MAXLEN"
    --max_rounds "$MAXROUNDS"
    --train_sampling_strategy group_by_length
    --logging_steps 1
    --save_strategy steps
    --save_steps "$SAVESTEPS"
    --save_total_limit 2
    --dataloader_num_workers 0
    --report_to "$REPORT"
    "${HW_ARGS[@]}"
    "$@")

echo "sft.sh: $DEVICE; batch $TOTALBSZ = $NDEV x $BSZPERDEV x GA $GA; output $OUTPUTPATH/$RUNNAME"
if [[ -n "${SFT_DRY_RUN:-}" ]]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
exec "${CMD[@]}"
