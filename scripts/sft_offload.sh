#!/usr/bin/env bash
# scripts/sft.sh with ZeRO-2 optimizer offload: the Adam states and the update live in
# CPU memory (DeepSpeed's CPU Adam), so a GPU only holds weights, gradients and
# activations. Same environment variables and extra arguments as scripts/sft.sh.
#
#   bash scripts/sft_offload.sh --max_steps 10
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DS_CONFIG="${DS_CONFIG:-$REPO/ds_configs/zero2_offload.json}" exec bash "$REPO/scripts/sft.sh" "$@"
