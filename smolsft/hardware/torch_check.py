"""Whether this interpreter's torch can use the GPUs nvidia-smi lists: its build, the CUDA
version it was built for against the driver, its kernel architectures, and one kernel run.
Standard library only at module level; torch is imported inside :func:`probe_torch`."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

from smolsft.hardware.facts import DRIVER_MIN_CUDA12, DRIVER_MIN_CUDA13
from smolsft.hardware.probe import GPU, cap_str


@dataclass
class TorchInfo:
    """``usable``: a CUDA kernel ran on GPU 0 (None: not tried); ``problem``: why not."""
    version: Optional[str] = None
    cuda: Optional[str] = None
    arch_list: list = field(default_factory=list)
    device_count: int = 0
    usable: Optional[bool] = None
    problem: Optional[str] = None


def arch_covers(arch_list: Sequence[str], cap: Sequence[int]) -> bool:
    """Whether torch's compiled architectures (``torch.cuda.get_arch_list()``: ``sm_XY`` cubins,
    ``compute_XY`` PTX) run on a GPU of capability ``cap``: a cubin runs on the same major
    with an equal or higher minor, PTX is compiled by the driver for any newer GPU."""
    for a in arch_list:
        m = re.fullmatch(r"(sm|compute)_(\d+)(\d)[a-z]?", a)
        if not m:
            continue
        major, minor = int(m.group(2)), int(m.group(3))
        if m.group(1) == "sm" and major == cap[0] and minor <= cap[1]:
            return True
        if m.group(1) == "compute" and (major, minor) <= tuple(cap):
            return True
    return False


def torch_gpu_problem(torch_version: Optional[str], torch_cuda: Optional[str], arch_list: Sequence[str],
                      gpus: Sequence[GPU], available: Optional[bool], kernel_error: Optional[str] = None) -> Optional[str]:
    """Why torch cannot use the GPUs nvidia-smi lists, with what to do; None when it can.

    Order: a CPU build; a CUDA build the driver is too old for (13.x < 580, 12.x < 525);
    a build without kernels for a GPU; then torch's own answer (is_available, a failed kernel)."""
    if not gpus:
        return None
    if torch_version is None:
        return "torch is not installed: run `bash setup.sh`"
    if not torch_cuda:
        return f"torch {torch_version} is a CPU build: run `bash setup.sh` on this machine to install a CUDA build"
    driver = min(g.driver_major for g in gpus)
    need = DRIVER_MIN_CUDA13 if int(torch_cuda.split(".")[0]) >= 13 else DRIVER_MIN_CUDA12
    if driver < need:
        return (f"torch {torch_version} is built for CUDA {torch_cuda}, which needs NVIDIA driver >= {need}; "
                f"this machine has {gpus[0].driver}: rerun `bash setup.sh` (it installs the builds this driver "
                f"runs) or upgrade the driver")
    if arch_list:
        for g in gpus:
            if not arch_covers(arch_list, g.capability):
                return (f"torch {torch_version} has no kernels for {g.name} (compute capability "
                        f"{cap_str(g.capability)}; it has {' '.join(arch_list)}): rerun `bash setup.sh`, which "
                        f"installs the CUDA 12.6 build for Pascal and Volta GPUs")
    if available is False:
        return (f"torch {torch_version} (CUDA {torch_cuda}) reports no usable GPU "
                f"(torch.cuda.is_available() is False): check CUDA_VISIBLE_DEVICES and `nvidia-smi`")
    if kernel_error:
        return f"a CUDA kernel failed on GPU 0 with torch {torch_version}: {kernel_error}"
    return None


def probe_torch(gpus: Sequence[GPU]) -> TorchInfo:
    """TorchInfo for this interpreter's torch (imported here, lazily): builds, a kernel on GPU 0."""
    info = TorchInfo()
    try:
        import torch
    except ImportError:
        info.problem = torch_gpu_problem(None, None, [], gpus, None)
        info.usable = False if gpus else None
        return info
    info.version, info.cuda = torch.__version__, torch.version.cuda
    available, kernel_error = None, None
    if info.cuda:
        info.arch_list = list(torch.cuda.get_arch_list())
        available = torch.cuda.is_available()
        info.device_count = torch.cuda.device_count() if available else 0
        if available:
            try:  # is_available() does not prove a kernel image exists for this GPU
                (torch.ones(8, device="cuda") * 2).sum().item()
            except RuntimeError as e:
                kernel_error = str(e).strip().splitlines()[0]
    info.problem = torch_gpu_problem(info.version, info.cuda, info.arch_list, gpus, available, kernel_error)
    info.usable = (info.problem is None) if gpus else None
    return info
