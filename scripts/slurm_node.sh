#!/usr/bin/env bash
# One node's task of scripts/sft.slurm (srun starts it once per node): this node's numbers from
# SLURM, in torchrun's names, then the launcher.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    cat <<'EOF'
usage: srun --ntasks-per-node=1 bash scripts/slurm_node.sh LAUNCHER [arguments]   (scripts/sft.slurm runs it)

Exports NODE_RANK (SLURM_NODEID) and NUM_GPUS (NUM_GPUS if set, else SLURM_GPUS_ON_NODE, else
SFT_GPUS_PER_NODE, the count sft.slurm read from SLURM_GPUS_PER_NODE; unset when none is; 0
GPUs: NUM_GPUS unset and CUDA_VISIBLE_DEVICES empty, the CPU on purpose), then
runs bash LAUNCHER arguments in its place. NNODES, MASTER_ADDR and MASTER_PORT come from sft.slurm.
EOF
    [[ $# -ge 1 ]]; exit $?
fi
if [[ -z "${SLURM_NODEID:-}" ]]; then
    echo "slurm_node.sh: error: no SLURM_NODEID: run it through srun (scripts/sft.slurm does)" >&2
    exit 2
fi
export NODE_RANK="$SLURM_NODEID"
g="${NUM_GPUS:-${SLURM_GPUS_ON_NODE:-${SFT_GPUS_PER_NODE:-}}}"
if [[ "$g" == 0 ]]; then  # no GPU allocated to this node: the CPU on purpose (sft.sh's rule)
    unset NUM_GPUS; export CUDA_VISIBLE_DEVICES=
elif [[ -n "$g" ]]; then export NUM_GPUS="$g"; else unset NUM_GPUS; fi
exec bash "$@"
