#!/usr/bin/env bash
# Supervised fine-tuning (Part 6) through DeepSpeed ZeRO-2 (torchrun where DeepSpeed cannot run):
# train_hw_parallel.py on every GPU of this machine, or on the CPU when there is none.
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
#   BSZPERDEV [from GPU memory, 4 on CPU]  samples per device per micro-step
#                              gradient accumulation = TOTALBSZ / devices / BSZPERDEV
#                              on a GPU the default is the largest that fits the smallest GPU's memory at
#                              MAXLEN, precision and --loss (smolsft/hardware/plan.py: docs/performance.md "Training memory"'s bytes,
#                              measured on the CPU, not on a GPU) and divides TOTALBSZ / devices; printed
#                              with its estimate. 11 GB (2080 Ti, fp16) at MAXLEN 2048: 4 (2 with --loss logits)
#   EPOCHS [3], LR [2e-5], WARMUP [0.1], MAXLEN [2048], MAXROUNDS [5], SAVESTEPS [200]
#                              (WARMUP goes to --warmup_steps: below 1 it is a share of the steps)
#   TRAINTURNS [all]           --train_turns: all turns of the trained role, or only the last
#   DS_CONFIG [ds_configs/zero2_no_offload.json]  (scripts/sft_offload.sh: optimizer on CPU)
#   HOSTFILE                   DeepSpeed hostfile for several nodes ("host slots=N" lines)
#   NUM_GPUS                   use this many GPUs instead of all that nvidia-smi lists
#   LAUNCHER [auto]            deepspeed, or torchrun (DDP without DeepSpeed); auto: DeepSpeed when it imports
#   CPU_RANKS [1]              processes on a machine without GPU (each gets cores/CPU_RANKS threads)
#   PRECISION [auto]           without GPU: auto = bf16 where the CPU has bf16 arithmetic (AVX512-BF16,
#                              AMX), else fp32; fp32 or bf16 force one (train_hw_parallel.py --precision)
#   SFT_DRY_RUN=1              print the decision line and the launch command and exit
#
# Hardware (python -m smolsft.hardware.plan --sft-plan, rules in docs/gpu.md), printed as the first line:
# bf16 where every GPU is compute capability 8.0+ (Ampere and newer), fp16 on 7.x (T4, 2080 Ti,
# V100), fp32 on Pascal; flash-attention where every GPU is 8.0+ and flash_attn imports, else
# sdpa; without GPU, bf16 or fp32 (PRECISION) on DeepSpeed's CPU accelerator (gloo). When DeepSpeed is not installed
# (or LAUNCHER=torchrun), the same training runs through torchrun (DDP, one process per device,
# no --deepspeed); an installed DeepSpeed that fails to import stops it with the fix (accelerate
# imports it under DDP too); optimizer offload and HOSTFILE need DeepSpeed. When nvidia-smi lists GPUs that
# torch cannot use (a CUDA build the driver is too old for, a CPU build) it stops and says why.
# An out-of-memory error ends with the BSZPERDEV to try. W&B logging only when WANDB_API_KEY or
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
TRAINTURNS="${TRAINTURNS:-all}"
SAVESTEPS="${SAVESTEPS:-200}"
DS_CONFIG="${DS_CONFIG:-$REPO/ds_configs/zero2_no_offload.json}"

# A relative data path that is not under the current folder may be the repository's.
if [[ ! -e "$DATAPATH" && -e "$REPO/$DATAPATH" ]]; then DATAPATH="$REPO/$DATAPATH"; fi

# Every variable and the flags passed on, checked at once before anything is probed or launched
# (smolsft/train/settings.py; the batch against the devices below, once they are known).
"$PYTHON" -m smolsft.train.settings TOTALBSZ="$TOTALBSZ" BSZPERDEV="${BSZPERDEV:-}" LR="$LR" EPOCHS="$EPOCHS" \
    WARMUP="$WARMUP" MAXLEN="$MAXLEN" MAXROUNDS="$MAXROUNDS" SAVESTEPS="$SAVESTEPS" -- "$@" || exit 2

# ---------------------------------------------------------------- hardware
# One probe decides (smolsft/hardware/plan.py --sft-plan): GPUs, precision, attention, launcher, BSZPERDEV.
# MAXLEN and --loss as the training will see them (extra arguments win).
EFF_MAXLEN="$MAXLEN"; LOSS=fused; CPU_ATTN_ASKED=auto
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
    case "${ARGS[i]}" in
        --cpu_attention) CPU_ATTN_ASKED="${ARGS[i+1]:-auto}" ;;
        --cpu_attention=*) CPU_ATTN_ASKED="${ARGS[i]#*=}" ;;
        --model_max_length) EFF_MAXLEN="${ARGS[i+1]:-$MAXLEN}" ;;
        --model_max_length=*) EFF_MAXLEN="${ARGS[i]#*=}" ;;
        --loss) LOSS="${ARGS[i+1]:-fused}" ;;
        --loss=*) LOSS="${ARGS[i]#*=}" ;;
    esac
done
PLAN_ARGS=(--sft-plan --format sh --maxlen "$EFF_MAXLEN" --loss "$LOSS" --total_bsz "$TOTALBSZ" --ds_config "$DS_CONFIG"
           --launcher "${LAUNCHER:-auto}")
[[ -n "${NUM_GPUS:-}" ]] && PLAN_ARGS+=(--num_gpus "$NUM_GPUS")
[[ -n "${BSZPERDEV:-}" ]] && PLAN_ARGS+=(--bszperdev "$BSZPERDEV")
# Several nodes: every "host slots=N" line of the DeepSpeed hostfile contributes N devices.
if [[ -n "${HOSTFILE:-}" ]]; then
    HOST_NDEV=$(awk '/slots=/{split($0, a, "slots="); n += a[2]} END {print n + 0}' "$HOSTFILE")
    PLAN_ARGS+=(--world "$HOST_NDEV")
fi
BSZ_GIVEN="${BSZPERDEV:+set}"
PLAN="$("$PYTHON" -m smolsft.hardware.plan "${PLAN_ARGS[@]}")" || exit 2
eval "$PLAN"
NGPU="$HW_NGPU"
HW_ARGS=()
LAUNCH=()
if [[ "$NGPU" -gt 0 ]]; then
    PREC="$HW_PRECISION"; ATTN="$HW_ATTENTION"
    [[ "$PREC" == bf16 ]] && HW_ARGS+=(--bf16 True)
    [[ "$PREC" == fp16 ]] && HW_ARGS+=(--fp16 True)
    [[ "$ATTN" == flash_attention_2 ]] && HW_ARGS+=(--flash_attn True)
    BSZPERDEV="$HW_BSZPERDEV"
    NDEV="$NGPU"
    DEVICE="$HW_DEVICE, $PREC, $ATTN"
    LAUNCH=(--num_gpus "$NGPU")
    if [[ -n "$HW_TORCH_PROBLEM" ]]; then
        if [[ -n "${SFT_DRY_RUN:-}" ]]; then
            echo "sft.sh: warning: torch cannot use the GPU(s): $HW_TORCH_PROBLEM (a real run stops here)" >&2
        else
            echo "sft.sh: error: nvidia-smi lists $NGPU GPU(s) but torch cannot use them: $HW_TORCH_PROBLEM." \
                 "(To train on the CPU instead: CUDA_VISIBLE_DEVICES= bash scripts/sft.sh)" >&2
            exit 1
        fi
    fi
else
    # No GPU: DeepSpeed's CPU accelerator runs each rank as a process (gloo). --num_gpus
    # sets the number of ranks; the cores are shared out so ranks do not oversubscribe.
    CORES=$("$PYTHON" -c "import os; print(len(os.sched_getaffinity(0)))")
    # CPU precision, resolved here once so that the launch line names what trains.
    # The attention train_hw_parallel.py will pick for it (--cpu_attention), from the same rule.
    read -r PREC CPU_ATTN < <(cd "$REPO" && "$PYTHON" -m smolsft.hardware.cpu "${PRECISION:-auto}" --attention "$CPU_ATTN_ASKED") \
        || exit 2  # cpu_precision printed why
    HW_ARGS+=(--precision "$PREC")
    # The faster layout, measured in both precisions (docs/performance_cpu.md): one rank with all the cores.
    CPU_RANKS="${CPU_RANKS:-1}"
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( CORES / CPU_RANKS > 0 ? CORES / CPU_RANKS : 1 ))}"
    BSZPERDEV="${BSZPERDEV:-4}"
    NDEV="$CPU_RANKS"
    # --
    DEVICE="CPU, $CPU_RANKS rank(s) x $OMP_NUM_THREADS thread(s), $PREC, $CPU_ATTN"
    HW_ARGS+=(--dataloader_pin_memory False)
    LAUNCH=(--num_gpus "$CPU_RANKS")
    HW_BSZ_NOTE="${BSZ_GIVEN:-CPU default}"
fi
if [[ -n "$HW_WARNING" ]]; then echo "sft.sh: warning: $HW_WARNING" >&2; fi
if [[ -n "${HOSTFILE:-}" ]]; then
    if [[ "$HW_LAUNCHER" != deepspeed ]]; then
        echo "sft.sh: error: HOSTFILE (several nodes) needs DeepSpeed's launcher: $HW_LAUNCHER_WHY" >&2
        exit 2
    fi
    NDEV="$HOST_NDEV"
    LAUNCH=(--hostfile "$HOSTFILE")
    DEVICE="$DEVICE; $NDEV devices from $HOSTFILE"
fi

if (( TOTALBSZ % (NDEV * BSZPERDEV) != 0 )); then
    echo "sft.sh: TOTALBSZ=$TOTALBSZ is not a multiple of devices ($NDEV) x BSZPERDEV ($BSZPERDEV)" >&2
    exit 2
fi
GA=$(( TOTALBSZ / NDEV / BSZPERDEV ))

if [[ -n "${WANDB_API_KEY:-}" || -n "${WANDB_MODE:-}" ]]; then REPORT=wandb; else REPORT=none; fi

MASTER_PORT="${MASTER_PORT:-$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])")}"

if [[ "$HW_LAUNCHER" == deepspeed ]]; then
    CMD=("$PYTHON" -u -m deepspeed.launcher.runner "${LAUNCH[@]}" --master_port "$MASTER_PORT"
        "$REPO/train_hw_parallel.py" --deepspeed "$DS_CONFIG")
    LAUNCH_DESC="DeepSpeed ZeRO-2 ($(basename "$DS_CONFIG"))"
else
    # DeepSpeed missing or broken: the same training as DDP, one process per device.
    [[ "$NGPU" -gt 0 ]] || HW_ARGS+=(--ddp_backend gloo)
    CMD=("$PYTHON" -u -m torch.distributed.run --nproc_per_node "$NDEV" --master_port "$MASTER_PORT"
        "$REPO/train_hw_parallel.py")
    LAUNCH_DESC="torchrun (DDP, no DeepSpeed: $HW_LAUNCHER_WHY)"
fi
CMD+=(
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
    --train_turns "$TRAINTURNS"
    --train_sampling_strategy group_by_length
    --logging_steps 1
    --save_strategy steps
    --save_steps "$SAVESTEPS"
    --save_total_limit 2
    --dataloader_num_workers 0
    --report_to "$REPORT"
    "${HW_ARGS[@]}"
    "$@")

# The decision in one line: device, precision, attention, launcher, batch per device, engine, why.
echo "sft.sh: $DEVICE; $LAUNCH_DESC; batch $TOTALBSZ = $NDEV x $BSZPERDEV x GA $GA (BSZPERDEV ${HW_BSZ_NOTE}); IFEval engine $HW_ENGINE; output $OUTPUTPATH/$RUNNAME${HW_WHY:+; why: $HW_WHY}"
if [[ "$REPORT" == none ]]; then
    echo "sft.sh: W&B not configured (set WANDB_API_KEY or WANDB_MODE to use it); logging to the console"
fi
if [[ -n "${SFT_DRY_RUN:-}" ]]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
# Run, keeping the output to name BSZPERDEV and the value to try when a rank runs out of memory.
LOG="$(mktemp)"  # under $TMPDIR or /tmp
trap 'rm -f "$LOG"' EXIT
set +e
"${CMD[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -ne 0 ]] && grep -q -E "CUDA out of memory|OutOfMemoryError" "$LOG"; then
    NEXT=""
    for ((b = BSZPERDEV - 1; b >= 1; b--)); do
        if (( TOTALBSZ % (NDEV * b) == 0 )); then NEXT=$b; break; fi
    done
    if [[ -n "$NEXT" ]]; then
        echo "sft.sh: error: out of GPU memory at BSZPERDEV=$BSZPERDEV (MAXLEN $EFF_MAXLEN, --loss $LOSS): try" \
             "BSZPERDEV=$NEXT (gradient accumulation becomes $(( TOTALBSZ / NDEV / NEXT )), TOTALBSZ stays $TOTALBSZ)" >&2
    else
        echo "sft.sh: error: out of GPU memory at BSZPERDEV=$BSZPERDEV, the smallest: lower MAXLEN ($EFF_MAXLEN)," \
             "pass --gradient_checkpointing True, or use scripts/sft_offload.sh" >&2
    fi
fi
exit $rc
