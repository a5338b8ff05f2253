"""The pinned DeepSpeed release imports on a CUDA machine that has no CUDA toolkit
(issue 20, point 3; deepspeed issue #7452, fixed by PR #8216 in 0.19.5).

Simulated on the CPU: a subprocess makes the CPU torch report one compute-capability-9.0
GPU with CUDA 13.0, leaves ``torch.utils.cpp_extension.CUDA_HOME`` at None (what torch
finds without nvcc), selects DeepSpeed's CUDA accelerator (``DS_ACCELERATOR=cuda``), then
imports deepspeed and reads its op-compatibility table. That is the code path of the
failure: every op builder's ``is_compatible()`` runs, and the CUDA ones call
``installed_cuda_version()``, which raises MissingCUDAException when CUDA_HOME is None.
deepspeed 0.18.4 fails here; 0.19.5 and 0.19.8 report those ops as not compatible and go on.
"""
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

from smolsft.files import REPO_ROOT

SIMULATE = r"""
import os, sys, types
import torch, torch.utils.cpp_extension as cpp
os.environ["DS_ACCELERATOR"] = "cuda"
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.current_device = lambda: 0
torch.version.cuda = "13.0"
cpp.CUDA_HOME = None  # no toolkit
props = types.SimpleNamespace(major=9, minor=0, name="simulated GPU", total_memory=80 * 2**30)
torch.cuda.get_device_properties = lambda *a, **k: props
torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
import deepspeed
from deepspeed.ops import __compatible_ops__ as ops
print("accelerator", deepspeed.get_accelerator()._name)
print("not compatible", sorted(k for k, v in ops.items() if not v))
"""


def pinned_deepspeed() -> str:
    text = (REPO_ROOT / "requirements.txt").read_text()
    return re.search(r"^deepspeed==(\S+)$", text, re.M).group(1)


@pytest.mark.slow
def test_pinned_deepspeed_imports_on_cuda_machine_without_toolkit():
    pin = pinned_deepspeed()
    try:
        installed = version("deepspeed")
    except PackageNotFoundError:
        pytest.skip("deepspeed is not installed (bash setup.sh installs the pinned release)")
    if installed != pin:
        pytest.skip(f"installed deepspeed {installed} is not the pinned {pin}: rerun bash setup.sh")
    r = subprocess.run([sys.executable, "-c", SIMULATE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "accelerator cuda" in r.stdout
    # The CUDA inference ops need nvcc: they are reported as not compatible instead of failing the import.
    not_compatible = r.stdout.split("not compatible", 1)[1]
    assert "ragged_ops" in not_compatible and "transformer_inference" in not_compatible, r.stdout
