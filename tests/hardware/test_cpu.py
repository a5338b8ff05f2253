"""smolsft/hardware/cpu.py: the CPU's bf16 hardware read from /proc/cpuinfo-style text, the
choice ``auto`` makes from it, and the answer on this machine against its own CPU flags."""
from pathlib import Path

import pytest

from smolsft.hardware import cpu as cp

X86_ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16 avx512_vnni\n"
X86_SPR = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8 avx512_bf16\n"
X86_OLD = "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
ARM_V9 = "processor\t: 0\nFeatures\t: fp asimd sve sve2 bf16 i8mm\n"
ARM_OLD = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"


@pytest.mark.parametrize("text,flags", [
    (X86_ZEN4, ["avx512_bf16"]), (X86_SPR, ["amx_bf16", "avx512_bf16"]), (X86_OLD, []),
    (ARM_V9, ["bf16"]), (ARM_OLD, []), ("", []),
    ("model name\t: bf16 avx512_bf16 in a name is not a flag\n", []),
])
def test_flags_from_cpuinfo(text, flags):
    assert cp.cpuinfo_bf16_flags(text) == flags


def test_resolve_and_describe():
    yes, no = (True, "torch reports AVX512-BF16"), (False, "no bf16 flag in /proc/cpuinfo")
    assert cp.resolve_precision("auto", yes) == "bf16" and cp.resolve_precision("auto", no) == "fp32"
    assert cp.resolve_precision("fp32", yes) == "fp32" and cp.resolve_precision("bf16", no) == "bf16"
    assert cp.describe("auto", yes) == "bf16 (auto: torch reports AVX512-BF16)"
    assert cp.describe("auto", no).startswith("fp32 (auto: no bf16 flag")
    assert "emulated" in cp.describe("bf16", no) and cp.describe("fp32", yes) == "fp32 (requested)"
    with pytest.raises(ValueError, match="precision 'fp16'"):
        cp.resolve_precision("fp16", yes)


def test_cpuinfo_is_read_when_torch_does_not_say(monkeypatch, tmp_path):
    import torch

    for fn in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, fn, raising=False)
    info = tmp_path / "cpuinfo"
    info.write_text(X86_ZEN4)
    assert cp.cpu_bf16_support(str(info)) == (True, f"{info} lists avx512_bf16")
    info.write_text(X86_OLD)
    assert cp.cpu_bf16_support(str(info)) == (False, f"no bf16 flag in {info}")
    assert cp.cpu_bf16_support(str(tmp_path / "absent")) == (False, f"{tmp_path / 'absent'} unreadable")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo on this system")
def test_this_machine_agrees_with_its_cpu_flags():
    """torch's answer (what its kernels dispatch to) and the kernel's CPU flags agree here."""
    flags = cp.cpuinfo_bf16_flags(Path("/proc/cpuinfo").read_text())
    assert cp.resolve_precision("auto") == ("bf16" if flags else "fp32")


def test_training_attention():
    from smolsft.hardware import rules

    assert rules.training_attention("auto", "cpu", "bf16") == (cp.CPU_ATTENTION, "auto: bf16 on the CPU")
    assert rules.training_attention("auto", "cpu", "fp32")[0] == cp.CPU_ATTENTION
    assert rules.training_attention("auto", "cpu", "fp16")[0] == "sdpa"  # unscaled fp16 products could overflow
    assert rules.training_attention("auto", "cuda", "bf16")[0] == "sdpa"
    assert rules.training_attention("auto", "mps", "bf16")[0] == "sdpa"
    assert rules.training_attention("sdpa", "cpu", "bf16") == ("sdpa", "as asked")
    assert rules.training_attention(cp.CPU_ATTENTION, "cpu", "fp32") == (cp.CPU_ATTENTION, "as asked")
    with pytest.raises(ValueError, match="on the CPU"):
        rules.training_attention(cp.CPU_ATTENTION, "cuda", "bf16")
    with pytest.raises(ValueError, match="expected one of"):
        rules.training_attention("eager", "cpu", "fp32")
