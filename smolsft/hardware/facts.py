"""The hardware and release facts the rules follow (sources: docs/gpu.md). Constants only,
standard library only: setup.sh reads them before anything is installed."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# NVIDIA's minor-version compatibility table: CUDA 13.x builds need driver >= 580, CUDA 12.x >= 525.
DRIVER_MIN_CUDA13 = 580
DRIVER_MIN_CUDA12 = 525
# torch 2.13's CUDA builds (pytorch RELEASE.md, CUDA support matrix): 13.0 (PyPI default) and
# 12.8+/12.9 have kernels from Turing 7.5 on; 12.6 from Maxwell 5.0 up to Hopper 9.0.
CUDA13_MIN_CAP = (7, 5)
CU126_MIN_CAP, CU126_MAX_CAP = (5, 0), (9, 0)
# vLLM 0.3x GPU wheels: compute capability 7.5+ (its GPU install docs; sm_70 dropped, vllm PR #39878).
VLLM_MIN_CAP = (7, 5)
BF16_MIN_CAP = (8, 0)      # bf16 arithmetic: Ampere and newer
FP16_MIN_CAP = (7, 0)      # tensor cores for fp16: Volta and newer
FLASH_ATTN_MIN_CAP = (8, 0)  # flash-attn 2: Ampere, Ada, Hopper (its README)
# The CUDA 12 builds of the pinned releases (driver 525-579) and the Pascal/Volta build.
CUDA12_TAG, LEGACY_TAG = "cu129", "cu126"
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
VLLM_INDEX = "https://wheels.vllm.ai/{version}/{tag}"
# What vllm 0.32.0 pins besides torch (its wheel's Requires-Dist); their CUDA 12 builds must be
# installed with torch, or pip takes PyPI's CUDA 13 builds for vLLM's dependencies.
TORCH_COMPANIONS = {"torchvision": "0.28.0", "torchaudio": "2.11.0"}
# nvidia-smi answers in well under a second; a hung driver never answers.
SMI_TIMEOUT_S = 10


class HardwareError(RuntimeError):
    """A probe or decision that cannot be made; the message is one line for the user."""
