#!/usr/bin/env bash
# Supervised fine-tuning (Part 6): train_hw_parallel.py on every GPU of this machine (or of
# several nodes), or on the CPU when there is none. A thin wrapper: `python -m smolsft.launch`
# checks every setting, prints the plan and the launch command, and execs it.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: [VAR=value ...] bash scripts/sft.sh [TRAINING ARGUMENTS ...]

  bash scripts/sft.sh                                  # the course run: SmolLM2-135M, 3 epochs
  bash scripts/sft.sh --max_steps 10                   # extra arguments go last and win
  MODELPATH=SmolLM2-135M DATAPATH=data/demo_sft.json OUTPUTPATH=ckpt RUNNAME=demo \
    TOTALBSZ=16 BSZPERDEV=4 bash scripts/sft.sh --num_train_epochs 1 --model_max_length 1024

Environment (defaults in brackets):
  MODELPATH [SmolLM2-135M]   model folder (relative to here or to the repository) or hub id
  DATAPATH  [smol-smoltalk-6k.json]  .json/.jsonl file, folder of them, or hub dataset id
  OUTPUTPATH [ckpt], RUNNAME [HW2]   the run writes OUTPUTPATH/RUNNAME; rerunning resumes it
  TOTALBSZ  [128]            samples per optimizer step over all devices of all nodes
  BSZPERDEV [from GPU memory, 4 on CPU]  samples per device per micro-step;
                             gradient accumulation = TOTALBSZ / (nodes x devices x BSZPERDEV).
                             On a GPU: the largest that fits the smallest GPU's memory at MAXLEN,
                             precision and --loss (smolsft/hardware/memory.py) and divides
                             TOTALBSZ / devices; 1 where nvidia-smi cannot read the memory (MIG)
  EPOCHS [3], LR [2e-5], WARMUP [0.1], MAXLEN [2048], MAXROUNDS [5], SAVESTEPS [200]
                             (WARMUP goes to --warmup_steps: below 1 it is a share of the steps)
  TRAINTURNS [all]           --train_turns: all turns of the trained role, or only the last
  DS_CONFIG [ds_configs/zero2_no_offload.json]  (scripts/sft_offload.sh: optimizer on CPU)
  NUM_GPUS                   use this many GPUs instead of all that nvidia-smi lists
  LAUNCHER [auto]            deepspeed, or torchrun (DDP without DeepSpeed); auto: DeepSpeed when it imports
  CPU_RANKS [1]              processes on a machine without GPU (each gets cores/CPU_RANKS threads)
  PRECISION [auto]           auto: bf16 on Ampere+ GPUs, fp16 on 7.x, fp32 on older; without GPU bf16
                             where the CPU has bf16 arithmetic (AVX512-BF16, AMX), else fp32; fp32/bf16 force one
  Several nodes without ssh (one sft.sh per node, e.g. under srun; SLURM's variables fill them):
  NNODES [SLURM_NNODES or 1], NODE_RANK [SLURM_NODEID or 0]
  MASTER_ADDR [head of SLURM_JOB_NODELIST by `scontrol show hostnames`]  node 0's address
  MASTER_PORT [29500 with several nodes; else a free port]  rendezvous port (torchrun c10d)
  HOSTFILE                   DeepSpeed hostfile for several nodes over ssh ("host slots=N" lines)
  SFT_DRY_RUN=1              print the plan line and the launch command and exit
  PYTHON [python]            the interpreter
  W&B logging only when WANDB_API_KEY or WANDB_MODE is set; otherwise the console.

The plan line names device, precision, attention, launcher, batch and why (rules:
docs/gpu.md). DeepSpeed ZeRO-2 where it imports; where it is missing or fails to import (or
LAUNCHER=torchrun) the same training runs as DDP under torchrun; optimizer offload and
HOSTFILE need DeepSpeed. With NNODES > 1 each node runs torchrun (c10d rendezvous at
MASTER_ADDR:MASTER_PORT), with --deepspeed where DeepSpeed imports. nvidia-smi failing or
hanging, or GPUs torch cannot use, stop the run (CUDA_VISIBLE_DEVICES= means the CPU on purpose).
USAGE
}
case "${1:-}" in -h|--help) usage; exit 0 ;; esac
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" -m smolsft.launch "$@"
