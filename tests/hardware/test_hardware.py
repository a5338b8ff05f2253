"""smolsft/hardware (the probe, its decisions, the install plan) and the launchers that follow it, by simulation:
a fake ``nvidia-smi`` on PATH prints chosen GPUs (name, compute capability, memory, driver),
and setup.sh's print-only mode and sft.sh's SFT_DRY_RUN=1 show what they would install and
launch. No GPU and no model are needed; torch here is the CPU build.

Expected batch sizes are worked out by hand in the comments from docs/performance.md "Training memory"'s
figures (MiB): fixed part for one GPU with 2-byte training 257 + 257 (weights, gradients) +
1539 / ranks (fp32 master weights + AdamW) + 763 (buckets) + 500 (CUDA context); 1450 per
2,048-token sample (+384 with --loss logits); 90% of memory.total usable."""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smolsft.hardware import cli, install, rules, torch_check
from smolsft.hardware import probe as hwprobe
from smolsft.hardware.facts import HardwareError
from smolsft.hardware.probe import GPU, ImportCheck
from smolsft.files import REPO_ROOT

SETUP = REPO_ROOT / "setup.sh"
SFT = REPO_ROOT / "scripts" / "sft.sh"
PY_TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"

# name, compute capability, memory.total (MiB, as nvidia-smi prints it), driver
RTX2080TI_535 = ("NVIDIA GeForce RTX 2080 Ti", "7.5", 11264, "535.183.01")
T4_550 = ("Tesla T4", "7.5", 15360, "550.54.15")
T4_580 = ("Tesla T4", "7.5", 15360, "580.82.07")
A100_535 = ("NVIDIA A100-SXM4-80GB", "8.0", 81920, "535.183.01")
H100_580 = ("NVIDIA H100 80GB HBM3", "9.0", 81559, "580.65.06")
V100_535 = ("Tesla V100-SXM2-16GB", "7.0", 16384, "535.183.01")
GTX1080_535 = ("NVIDIA GeForce GTX 1080", "6.1", 8192, "535.183.01")
RTX3090_550 = ("NVIDIA GeForce RTX 3090", "8.6", 24576, "550.54.15")
RTX2080TI_550 = ("NVIDIA GeForce RTX 2080 Ti", "7.5", 11264, "550.54.15")


SMI_FAILURES = {  # how a fake nvidia-smi without GPUs behaves
    "nodevice": "echo 'No devices were found'\nexit 6\n",  # a driver and no GPU: a CPU machine
    "driver": "echo 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n",
    "hang": "exec sleep 120\n",  # exec: the probe's kill after its timeout ends the sleep too
}


def fake_nvidia_smi(bin_dir: Path, gpus, raw: str = None, fail: str = "nodevice") -> Path:
    """An ``nvidia-smi`` in ``bin_dir`` answering ``-L`` and the probe's CSV query for ``gpus``
    (tuples as above); ``gpus=None`` (and no ``raw``): no GPU, behaving as ``SMI_FAILURES[fail]``;
    ``raw``: print this text for the query instead."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if gpus is None and raw is None:
        smi.write_text("#!/bin/sh\n" + SMI_FAILURES[fail])
    else:
        listing = "\n".join(f"GPU {i}: {g[0]} (UUID: GPU-{i:08d})" for i, g in enumerate(gpus or []))
        csv = raw if raw is not None else "\n".join(f"{g[0]}, {g[1]}, {g[2]}, {g[3]}" for g in gpus)
        smi.write_text(f"#!/bin/sh\nif [ \"$1\" = \"-L\" ]; then\ncat <<'EOF'\n{listing}\nEOF\nelse\ncat <<'EOF'\n"
                       f"{csv}\nEOF\nfi\n")
    smi.chmod(0o755)
    return smi


def stub_package(root: Path, name: str, body: str = "") -> Path:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "__init__.py").write_text(body)
    return root


def sim_env(tmp_path: Path, gpus=None, flash_attn: bool = False, deepspeed: str = "stub", raw: str = None,
            fail: str = "nodevice") -> dict:
    """Environment for a simulated machine (``gpus=None``: no usable GPU). PATH: the fake nvidia-smi, then this venv's bin
    folder as it is (not resolved, so its python finds pyvenv.cfg), then the rest. ``deepspeed``:
    ``stub`` (an empty package that imports at once, so the probe is fast), ``broken`` (raises
    on import, as an installed DeepSpeed whose op check fails), ``real``."""
    bin_dir = tmp_path / "bin"
    fake_nvidia_smi(bin_dir, gpus, raw, fail)  # gpus=None: one without GPU, shadowing a real one
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{bin_dir}:{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    paths = []
    stubs = tmp_path / "stubs"
    if flash_attn:
        paths.append(str(stub_package(stubs, "flash_attn")))
    if deepspeed == "stub":
        paths.append(str(stub_package(stubs, "deepspeed")))
    elif deepspeed == "broken":
        paths.append(str(stub_package(
            stubs, "deepspeed", "raise RuntimeError('simulated: CUDA_HOME does not exist, unable to compile CUDA op(s)')")))
    env["PYTHONPATH"] = ":".join([*dict.fromkeys(paths), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env.pop("FLASH_ATTN_WHEEL", None)
    return env


def setup_dry(env, *args, **overrides):
    # SETUP_FORCE_PIP: show the whole install even where scripts/pip_state.py would skip pip (tests/scripts/test_pip_state.py)
    return subprocess.run(["bash", str(SETUP), "--dry_run", *args],
                          env={**env, "PYTHON": sys.executable, "SETUP_FORCE_PIP": "1", **overrides},
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)


def sft_dry(env, *args, script=SFT, **overrides):
    return subprocess.run(["bash", str(script), *args],
                          env={**env, "SFT_DRY_RUN": "1", "MASTER_PORT": "29999", "PYTHON": sys.executable, **overrides},
                          capture_output=True, text=True, timeout=180)


def pip_lines(r) -> list:
    return [x[2:] for x in r.stdout.splitlines() if x.startswith("+ ") and " -m pip " in x]


def launch_argv(r) -> list:
    return shlex.split(r.stdout.strip().splitlines()[-1])


def flag(argv, name):
    idx = [i for i, a in enumerate(argv) if a == name]
    return argv[idx[-1] + 1] if idx else None


def gpu(t, index=0) -> GPU:
    return GPU(index, t[0], tuple(int(x) for x in t[1].split(".")), t[2], t[3])


# ------------------------------------------------------------------ parsing the probe
def test_parse_smi_csv_and_its_errors():
    gpus = hwprobe.parse_smi_csv("NVIDIA A100-SXM4-80GB, 8.0, 81920, 535.183.01\n\n"
                                  "Weird, Name, GPU, 7.5, 15360, 550.54.15\n")
    assert [(g.index, g.name, g.capability, g.memory_mib, g.driver_major) for g in gpus] == [
        (0, "NVIDIA A100-SXM4-80GB", (8, 0), 81920, 535), (1, "Weird, Name, GPU", (7, 5), 15360, 550)]
    assert gpus[0].family == "Ampere" and gpus[1].family == "Turing"
    with pytest.raises(HardwareError, match=r"line 2 \('T4, 7.5'\): expected 4 comma-separated fields"):
        hwprobe.parse_smi_csv("A100, 8.0, 81920, 535.1\nT4, 7.5\n")
    with pytest.raises(HardwareError, match=r"line 1 .*compute_cap '\[N/A\]' is not MAJOR.MINOR"):
        hwprobe.parse_smi_csv("T4, [N/A], 15360, 470.1\n")
    # issue 40 row 3: a MIG slice's [N/A] memory is unknown, not an error
    mig = hwprobe.parse_smi_csv("NVIDIA A100-SXM4-40GB MIG 1g.5gb, 8.0, [N/A], 550.1\n")
    assert mig[0].memory_mib is None and "memory unknown" in mig[0].describe()
    assert "GPU 0 (NVIDIA A100-SXM4-40GB MIG 1g.5gb)" in hwprobe.unknown_memory_warning(mig)


def test_family_names_cover_the_course_table():
    caps = {"Pascal": (6, 1), "Volta": (7, 0), "Turing": (7, 5), "Ampere": (8, 6), "Ada": (8, 9),
            "Hopper": (9, 0), "Blackwell": (12, 0)}
    assert {name: hwprobe.family(c) for name, c in caps.items()} == {name: name for name in caps}


def test_cuda_visible_devices_filters_by_index():
    gpus = [gpu(A100_535, 0), gpu(V100_535, 1)]
    assert hwprobe.visible(gpus, "1")[0] == [gpus[1]]
    assert hwprobe.visible(gpus, "")[0] == [] and hwprobe.visible(gpus, "-1")[0] == []
    assert hwprobe.visible(gpus, "1,0")[0] == [gpus[1], gpus[0]]
    assert hwprobe.visible(gpus, "0,7,1")[0] == [gpus[0]]  # CUDA stops at the first invalid index
    kept, note = hwprobe.visible(gpus, "GPU-1234")
    assert kept == gpus and "not a list of indices" in note


def test_probe_reads_the_fake_nvidia_smi_and_names_a_bad_line(tmp_path):
    env = sim_env(tmp_path, [A100_535, RTX2080TI_535])
    gpus, note = hwprobe.query_gpus(env)
    assert [g.name for g in gpus] == [A100_535[0], RTX2080TI_535[0]]
    assert hwprobe.query_gpus({**env, "CUDA_VISIBLE_DEVICES": "1"})[0][0].name == RTX2080TI_535[0]
    bad = sim_env(tmp_path / "bad", raw="Tesla T4, 7.5, 15360\n")
    with pytest.raises(HardwareError, match="nvidia-smi output line 1 .*expected 4"):
        hwprobe.query_gpus(bad)
    r = subprocess.run([sys.executable, "-m", "smolsft.hardware", "--setup-plan"], env=bad,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("[hardware] error: nvidia-smi output line 1")
    none, note = hwprobe.query_gpus(sim_env(tmp_path / "none", None, raw=None) | {"PATH": "/nonexistent"})
    assert none == [] and note == "nvidia-smi not found"
    fake_nvidia_smi(tmp_path / "nodev", None)
    none, note = hwprobe.query_gpus({**env, "PATH": str(tmp_path / "nodev")})
    assert none == [] and note == "nvidia-smi finds no GPU (No devices were found)"


@pytest.mark.parametrize("fail, shown", [("driver", r"failed \(exit 9: NVIDIA-SMI has failed because it could not "
                                                    r"communicate with the NVIDIA driver.\)"),
                                         ("hang", r"did not answer in 1s")])
def test_a_failing_or_hanging_nvidia_smi_stops_instead_of_training_on_the_cpu(tmp_path, fail, shown):
    """Issue 40 row 4: nvidia-smi present but failing (exit 9) or hanging is an error naming
    the failure and CUDA_VISIBLE_DEVICES= (the CPU on purpose), within seconds; with
    CUDA_VISIBLE_DEVICES= nvidia-smi is not asked."""
    env = sim_env(tmp_path, None, fail=fail)
    t0 = time.monotonic()
    with pytest.raises(HardwareError, match=shown + r".*set CUDA_VISIBLE_DEVICES= \(empty\) to run on the CPU on purpose"):
        hwprobe.query_gpus(env, timeout=1)
    assert time.monotonic() - t0 < 10
    assert hwprobe.query_gpus({**env, "CUDA_VISIBLE_DEVICES": ""}) == ([], "CUDA_VISIBLE_DEVICES='' hides every GPU")
    assert hwprobe.query_gpus({**env, "CUDA_VISIBLE_DEVICES": "-1"})[0] == []


@pytest.mark.slow
def test_cli_help_json_and_one_line(tmp_path):
    env = sim_env(tmp_path, [T4_550])
    h = subprocess.run([sys.executable, "-m", "smolsft.hardware", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "--setup-plan" in h.stdout and "--sft-plan" in h.stdout and "--check-torch" in h.stdout
    line = subprocess.run([sys.executable, "-m", "smolsft.hardware"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert line.returncode == 0 and len(line.stdout.strip().splitlines()) == 1
    assert "Tesla T4 (Turing 7.5, 15360 MiB)" in line.stdout and "install: cuda12" in line.stdout
    assert "cannot use them: torch 2.13.0+cpu is a CPU build" in line.stdout
    j = subprocess.run([sys.executable, "-m", "smolsft.hardware", "--json"], env=env, capture_output=True,
                       text=True, timeout=120)
    data = json.loads(j.stdout)
    assert data["probe"]["gpus"][0]["capability"] == [7, 5] and data["setup_plan"]["kind"] == "cuda12"
    assert data["probe"]["deepspeed"]["ok"] is True and data["ifeval_engine"][0] == "vllm"


# ------------------------------------------------------------------ torch vs driver, kernels
def test_torch_gpu_problem_says_why_and_what_to_do():
    t4 = [gpu(T4_550)]
    cpu = torch_check.torch_gpu_problem("2.13.0+cpu", None, [], t4, False)
    assert "CPU build" in cpu and "bash setup.sh" in cpu
    drv = torch_check.torch_gpu_problem("2.13.0", "13.0", ["sm_75", "sm_80", "sm_90"], t4, True)
    assert "CUDA 13.0, which needs NVIDIA driver >= 580" in drv and "550.54.15" in drv and "setup.sh" in drv
    assert torch_check.torch_gpu_problem("2.13.0+cu129", "12.9", ["sm_75", "sm_80", "sm_86", "sm_90"], t4, True) is None
    v100 = torch_check.torch_gpu_problem("2.13.0", "13.0", ["sm_75", "sm_80", "sm_90", "sm_100", "sm_120"],
                                      [GPU(0, "Tesla V100", (7, 0), 16384, "580.1")], True)
    assert "no kernels for Tesla V100 (compute capability 7.0" in v100 and "CUDA 12.6 build" in v100
    # a cubin runs on the same major with a higher minor; PTX on anything newer
    assert torch_check.arch_covers(["sm_80"], (8, 6)) and not torch_check.arch_covers(["sm_86"], (8, 0))
    assert torch_check.arch_covers(["sm_90", "compute_90"], (12, 0)) and not torch_check.arch_covers(["sm_90"], (12, 0))
    assert torch_check.torch_gpu_problem("2.13.0", "12.6", ["sm_70"], t4, True, "no kernel image") is not None


@pytest.mark.slow
def test_check_torch_fails_on_a_cpu_torch_beside_a_gpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "smolsft.hardware", "--check-torch"],
                       env=sim_env(tmp_path, [T4_580]), capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "nvidia-smi lists 1 GPU(s) but torch cannot use them" in r.stderr
    r = subprocess.run([sys.executable, "-m", "smolsft.hardware", "--check-torch"],
                       env=sim_env(tmp_path / "cpu"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no GPU" in r.stdout


# ------------------------------------------------------------------ decision rules
def test_precision_attention_and_engine_rules():
    assert rules.gpu_precision([gpu(H100_580)])[0] == "bf16"
    assert rules.gpu_precision([gpu(T4_550)])[0] == "fp16"
    assert rules.gpu_precision([gpu(V100_535)])[0] == "fp16"
    assert rules.gpu_precision([gpu(GTX1080_535)])[0] == "fp32"
    assert rules.gpu_precision([gpu(A100_535), gpu(V100_535, 1)])[0] == "fp16"  # the oldest decides
    assert rules.training_attention("auto", "cuda", "bf16", [gpu(A100_535)], True)[0] == "flash_attention_2"
    assert rules.training_attention("auto", "cuda", "bf16", [gpu(A100_535)], False)[0] == "sdpa"
    assert rules.training_attention("auto", "cuda", "bf16", [gpu(A100_535), gpu(RTX2080TI_535, 1)], True)[0] == "sdpa"
    engine, why = rules.ifeval_engine([gpu(V100_535)])
    assert engine == "hf" and "7.5+" in why and "Tesla V100-SXM2-16GB is 7.0" in why
    assert rules.ifeval_engine([gpu(T4_550)])[0] == "vllm" and rules.ifeval_engine([])[0] == "vllm"


@pytest.mark.parametrize("mem,prec,loss,ndev,expected", [
    # 2080 Ti: 0.9 x 11264 = 10138 usable; fixed 3316; fused 6822 / 1450 = 4.7 -> 4 (docs/performance.md: 4);
    # logits 6822 / 1834 = 3.7 -> 3, not a divisor of 128 -> 2 (docs/performance.md: 2)
    (11264, "fp16", "fused", 1, 4),
    (11264, "fp16", "logits", 1, 2),
    # T4: 13824 - 3316 = 10508; / 1450 = 7.2 -> 4; / 1834 = 5.7 -> 4
    (15360, "fp16", "fused", 1, 4),
    (15360, "fp16", "logits", 1, 4),
    # A100 80 GB: 73728 - 3316 = 70412 / 1450 = 48.6 -> 32
    (81920, "bf16", "fused", 1, 32),
    # two GPUs share the master weights and AdamW (1539 / 2): 11 GB: 10138 - 2547 = 7591 / 1450 = 5.2 -> 4
    (11264, "fp16", "fused", 2, 4),
    # GTX 1080, fp32: fixed 513 + 513 + 1539 + 1526 (4-byte buckets) + 500 = 4592; 7373 - 4592 = 2781 / 2623 -> 1
    (8192, "fp32", "fused", 1, 1),
])
def test_batch_per_device_from_memory(mem, prec, loss, ndev, expected):
    bsz, note, est = rules.batch_per_device(128, ndev, None, mem, True, 2048, prec, loss)
    assert bsz == expected and note.startswith("from memory: est. ")
    assert est["estimate_mib"] <= est["usable_mib"] and 128 % (ndev * bsz) == 0


def test_batch_rule_scales_with_maxlen_and_refuses_what_cannot_fit():
    # MAXLEN 512 on the 2080 Ti: 6822 / (1450 / 4) = 18.8 -> 16
    assert rules.batch_per_device(128, 1, None, 11264, True, 512, "fp16")[0] == 16
    with pytest.raises(HardwareError, match="one sample of 2048 tokens does not fit.*lower MAXLEN"):
        rules.batch_per_device(128, 1, None, 4096, True, 2048, "fp32")
    with pytest.raises(HardwareError, match="TOTALBSZ=10 is not a multiple of the 4 devices"):
        rules.batch_per_device(10, 4, None, 81920, True, 2048, "bf16")
    # a given BSZPERDEV is kept, with the estimate; the CPU default; unknown memory (MIG)
    assert rules.batch_per_device(128, 1, 16, 11264, True, 2048, "fp16")[1].endswith(
        "MORE than fits: the estimate suggests BSZPERDEV=4")
    assert rules.batch_per_device(128, 2, None, None, False)[:2] == (4, "CPU default")
    assert rules.batch_per_device(128, 1, None, None, True)[:2] == (
        1, "GPU memory unknown: 1, the smallest; set BSZPERDEV to use more")
    assert rules.batch_per_device(128, 1, 8, None, True)[:2] == (8, "set; GPU memory unknown: no estimate")


def test_divisibility_rule():
    assert rules.divisibility_problem(128, 2, 4) is None and rules.gradient_accumulation(128, 2, 4) == 16
    assert rules.divisibility_problem(10, 2, 4) == "TOTALBSZ 10: not a multiple of devices (2) x BSZPERDEV (4) = 8"
    with pytest.raises(HardwareError, match="not a multiple of devices"):
        rules.gradient_accumulation(10, 2, 4)
    assert rules.largest_batch_at_most(3, 128, 1) == 2 and rules.largest_batch_at_most(5, 96, 2) == 4


def test_precision_names_and_rules():
    assert [rules.precision_name(*f) for f in [(True, False), (False, True), (False, False), ("True", "False"),
                                               ("False", "True"), (None, None)]] == [
        "bf16", "fp16", "fp32", "bf16", "fp16", "fp32"]
    assert rules.precision([gpu(T4_550)])[0] == "fp16" and rules.precision([gpu(T4_550)], "fp32")[0] == "fp32"
    assert rules.precision([gpu(T4_550)], "bf16") == ("bf16", "PRECISION=bf16 (requested; Tesla T4 is 7.5 < 8.0: "
                                                              "no bf16 arithmetic, emulated)")
    assert rules.generation_dtype([gpu(A100_535)]) == "bfloat16" and rules.generation_dtype([gpu(V100_535)]) == "float16"
    assert rules.precision([], "fp32")[0] == "fp32"  # the CPU rule (smolsft.hardware.cpu)


def test_launcher_rules():
    ok = ImportCheck(True, True, None, "0.18.4")
    assert rules.launcher(ok, None, False) == ("deepspeed", True, "deepspeed 0.18.4 imports")
    assert rules.launcher(ok, None, False, "torchrun")[:2] == ("torchrun", False)
    # several nodes: torchrun on each, DeepSpeed under it where it imports, DDP where not
    assert rules.launcher(ok, None, False, "auto", nnodes=2)[:2] == ("torchrun", True)
    missing = ImportCheck(False, False, "not installed")
    assert rules.launcher(missing, None, False) == ("torchrun", False, "deepspeed is not installed")
    assert rules.launcher(missing, None, False, nnodes=2)[:2] == ("torchrun", False)
    with pytest.raises(HardwareError, match="optimizer offload .* needs DeepSpeed"):
        rules.launcher(missing, None, True)
    with pytest.raises(HardwareError, match="HOSTFILE and NNODES"):
        rules.launcher(ok, None, False, nnodes=2, hostfile=True)


def test_broken_deepspeed_gives_ddp_and_refusals_name_the_true_reason():
    """Issue 40 row 11: an installed DeepSpeed that fails to import leaves the DDP path
    (train_hw_parallel.py hides it from accelerate: tests/train/test_ddp_fallback.py trains so);
    what needs DeepSpeed is refused with the import error, not with a claim about accelerate."""
    broken = ImportCheck(True, False, "MissingCUDAException: CUDA_HOME does not exist", "0.18.4")
    name, with_ds, why = rules.launcher(broken, None, False)
    assert (name, with_ds) == ("torchrun", False)
    assert "import deepspeed 0.18.4 failed: MissingCUDAException: CUDA_HOME does not exist" in why
    for kwargs, need in [({"offload": True}, "optimizer offload"), ({"requested": "deepspeed"}, "LAUNCHER=deepspeed"),
                         ({"hostfile": True}, "HOSTFILE")]:
        args = {"ds": broken, "toolkit": None, "offload": False, **kwargs}
        with pytest.raises(HardwareError, match=rf"{need}.* needs DeepSpeed's launcher, and import deepspeed 0.18.4 "
                                                r"failed: MissingCUDAException") as e:
            rules.launcher(**args)
        assert "accelerate" not in str(e.value)


def test_flash_attn_wheel_must_match_torch_cuda_and_python():
    good = f"flash_attn-2.8.3+cu12torch2.13cxx11abiTRUE-{PY_TAG}-{PY_TAG}-linux_x86_64.whl"
    assert install.flash_attn_wheel_matches(good, "2.13.0", 12, PY_TAG) is None
    bad = install.flash_attn_wheel_matches("flash_attn-2.8.3+cu12torch2.11cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
                                            "2.13.0", 13, "cp311")
    assert "CUDA 12 (torch here: CUDA 13)" in bad and "torch 2.11 (here: 2.13)" in bad and "cp312 (here: cp311)" in bad
    assert "does not name" in install.flash_attn_wheel_matches("flash_attn-2.8.3.tar.gz", "2.13.0", 12, PY_TAG)
    assert "flash-attn 2.7.4 (pinned: 2.8.3)" in install.flash_attn_wheel_matches(
        good.replace("2.8.3", "2.7.4"), "2.13.0", 12, PY_TAG, "2.8.3")


def test_setup_plan_refusals_name_what_is_needed():
    old = install.setup_plan([GPU(0, "Tesla T4", (7, 5), 15360, "470.256.02")], "2.13.0", "0.32.0")
    assert old.kind == "refuse" and "470.256.02" in old.why and ">= 525" in old.why and ">= 580" in old.why
    mixed = install.setup_plan([gpu(V100_535), GPU(1, "NVIDIA B200", (10, 0), 183359, "535.1")], "2.13.0", "0.32.0")
    assert mixed.kind == "refuse" and "CUDA_VISIBLE_DEVICES" in mixed.why
    kepler = install.setup_plan([GPU(0, "Tesla K80", (3, 7), 11441, "535.1")], "2.13.0", "0.32.0")
    assert kepler.kind == "refuse" and "starts at 5.0" in kepler.why


# ------------------------------------------------------------------ the fake-GPU matrix
# machine -> builds setup.sh installs, precision, attention, BSZPERDEV (fused; worked out above), engine
REQS = "-m pip install -r .cache_requirements_gpu.txt"
CU129 = ("-m pip install torch==2.13.0+cu129 torchvision==0.28.0+cu129 torchaudio==2.11.0+cu129 "
         "--index-url https://download.pytorch.org/whl/cu129")
VLLM129 = "-m pip install vllm==0.32.0+cu129 --extra-index-url https://wheels.vllm.ai/0.32.0/cu129"
CU126 = "-m pip install torch==2.13.0+cu126 --index-url https://download.pytorch.org/whl/cu126"
DEFAULT = "-m pip install -r .cache_requirements_gpu.txt -r requirements-gpu.txt"
MATRIX = {
    # name: (gpus, pip commands (after the interpreter), --fp16/--bf16/None, flash, BSZPERDEV, GA, engine)
    "2080ti_535": ([RTX2080TI_535], [CU129, REQS, VLLM129], "--fp16", False, 4, 32, "vllm"),
    "t4_550": ([T4_550], [CU129, REQS, VLLM129], "--fp16", False, 4, 32, "vllm"),
    "t4_580": ([T4_580], [DEFAULT], "--fp16", False, 4, 32, "vllm"),
    # 73728 - 3316 = 70412 / 1450 = 48.6 -> 32
    "a100_535": ([A100_535], [CU129, REQS, VLLM129], "--bf16", True, 32, 4, "vllm"),
    # 0.9 x 81559 = 73403 - 3316 = 70087 / 1450 = 48.3 -> 32
    "h100_580": ([H100_580], [DEFAULT], "--bf16", True, 32, 4, "vllm"),
    # 14746 - 3316 = 11430 / 1450 = 7.9 -> 4
    "v100_535": ([V100_535], [CU126, REQS], "--fp16", False, 4, 32, "hf"),
    "gtx1080_535": ([GTX1080_535], [CU126, REQS], None, False, 1, 128, "hf"),
    # the 2080 Ti decides precision, attention and memory; two ranks: 10138 - 2547 = 7591 / 1450 = 5.2 -> 4
    "3090_and_2080ti_550": ([RTX3090_550, RTX2080TI_550], [CU129, REQS, VLLM129], "--fp16", False, 4, 16, "vllm"),
}


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_matrix_setup_dry_run(tmp_path, case):
    gpus, pips, _, flash, _, _, engine = MATRIX[case]
    r = setup_dry(sim_env(tmp_path, gpus, flash_attn=flash))
    assert r.returncode == 0, r.stdout + r.stderr
    decision = [x for x in r.stdout.splitlines() if x.startswith("[hardware] ")]
    assert len(decision) == 1 and f"IFEval engine {engine}" in decision[0]
    got = pip_lines(r)
    assert [x.split(" ", 1)[1] for x in got] == [*pips, "-m pip install --no-deps -r requirements-nodeps.txt",
                                                  "-m pip install --quiet --no-deps --no-build-isolation -e ."]
    assert all(x.split(" ", 1)[0] == sys.executable for x in got)
    assert "flash-attn" in r.stdout and not any("flash" in x for x in got)  # no source build, no wheel given
    assert f"+ {sys.executable} -m smolsft.hardware --check-torch" in r.stdout and "dry run: nothing was installed" in r.stdout
    if engine == "hf":
        assert "no vLLM here (it needs compute capability 7.5+)" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MATRIX))
def test_matrix_sft_dry_run(tmp_path, case):
    gpus, _, prec, flash, bsz, ga, engine = MATRIX[case]
    r = sft_dry(sim_env(tmp_path, gpus, flash_attn=flash))
    assert r.returncode == 0, r.stdout + r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"sft.sh: {len(gpus)} GPU(s): ") and "DeepSpeed ZeRO-2" in first
    assert f"batch 128 = {len(gpus)} x {bsz} x GA {ga} (BSZPERDEV from memory: est. " in first
    assert f"IFEval engine {engine}" in first and "why: " in first
    argv = launch_argv(r)
    assert argv[argv.index("--num_gpus") + 1] == str(len(gpus)) and "--deepspeed" in argv
    assert flag(argv, "--per_device_train_batch_size") == str(bsz) and flag(argv, "--gradient_accumulation_steps") == str(ga)
    for p in ("--fp16", "--bf16"):
        assert (flag(argv, p) == "True") is (p == prec)
    assert (flag(argv, "--flash_attn") == "True") is flash
    # torch here is the CPU build: a real run would stop, the dry run says so
    assert "torch cannot use the GPU(s): torch 2.13.0+cpu is a CPU build" in r.stderr


@pytest.mark.slow
def test_logits_loss_and_short_maxlen_change_the_batch(tmp_path):
    env = sim_env(tmp_path, [RTX2080TI_535])
    argv = launch_argv(sft_dry(env, "--loss", "logits"))
    assert flag(argv, "--per_device_train_batch_size") == "2" and flag(argv, "--gradient_accumulation_steps") == "64"
    r = sft_dry(env, MAXLEN="512")
    assert flag(launch_argv(r), "--per_device_train_batch_size") == "16" and "MAXLEN 512" in r.stdout
    r = sft_dry(env, "--model_max_length", "512")  # extra arguments win, the estimate follows them
    assert flag(launch_argv(r), "--per_device_train_batch_size") == "16"
    r = sft_dry(env, BSZPERDEV="16")  # the user's value is kept, with a warning in the estimate
    assert flag(launch_argv(r), "--per_device_train_batch_size") == "16"
    assert "MORE than fits: the estimate suggests BSZPERDEV=4" in r.stdout


def test_setup_refusals_and_cpu_override(tmp_path):
    r = setup_dry(sim_env(tmp_path, [("Tesla T4", "7.5", 15360, "470.256.02")]))
    assert r.returncode == 1 and "[setup] error: NVIDIA driver 470.256.02 is too old" in r.stderr
    assert not pip_lines(r)
    cpu = setup_dry(sim_env(tmp_path / "cpu"))
    forced = setup_dry(sim_env(tmp_path / "forced", [T4_550]), SETUP_CPU="1")
    # the CPU path, as before this probe: requirements.txt, drop the torch-mismatched extras, nodeps
    expected = [f"{sys.executable} -m pip install -r requirements.txt",
                f"{sys.executable} -m pip uninstall -y -q torchvision torchaudio torchcodec",
                f"{sys.executable} -m pip install --no-deps -r requirements-nodeps.txt",
                f"{sys.executable} -m pip install --quiet --no-deps --no-build-isolation -e ."]
    assert pip_lines(cpu) == expected and pip_lines(forced) == expected
    assert "no GPU (nvidia-smi sees none)" in cpu.stdout
    # DeepSpeed's CPU op is compiled at setup on the CPU path only
    build = f"+ {sys.executable} -m smolsft.hardware --build_cpu_ops"
    assert build in cpu.stdout and build in forced.stdout and build not in r.stdout
    assert subprocess.run(["bash", str(SETUP), "--bogus"], capture_output=True, text=True).returncode == 2


def test_setup_installs_a_matching_flash_attn_wheel_only(tmp_path):
    env = sim_env(tmp_path, [A100_535])
    wheel = f"/wheels/flash_attn-2.8.3+cu12torch2.13cxx11abiTRUE-{PY_TAG}-{PY_TAG}-linux_x86_64.whl"
    r = setup_dry(env, FLASH_ATTN_WHEEL=wheel)
    assert f"{sys.executable} -m pip install --no-deps --only-binary=:all: {wheel}" in pip_lines(r)
    r = setup_dry(sim_env(tmp_path / "h100", [H100_580]), FLASH_ATTN_WHEEL=wheel)  # CUDA 13 torch, CUDA 12 wheel
    assert not any("flash_attn" in x for x in pip_lines(r)) and "FLASH_ATTN_WHEEL does not match: " in r.stdout
    r = setup_dry(sim_env(tmp_path / "t4", [T4_580]), FLASH_ATTN_WHEEL=wheel)
    assert not any("flash_attn" in x for x in pip_lines(r)) and "needs compute capability 8.0+" in r.stdout


# ------------------------------------------------------------------ without DeepSpeed, out of memory
@pytest.mark.slow
def test_torchrun_when_asked_and_errors_where_deepspeed_is_needed(tmp_path):
    env = sim_env(tmp_path, [A100_535, A100_535])
    r = sft_dry(env, LAUNCHER="torchrun")
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r)
    assert argv[1:4] == ["-u", "-m", "torch.distributed.run"] and flag(argv, "--nproc_per_node") == "2"
    assert "--deepspeed" not in argv and "--num_gpus" not in argv and flag(argv, "--bf16") == "True"
    assert "torchrun (DDP, no DeepSpeed: LAUNCHER=torchrun)" in r.stdout.splitlines()[0]
    one = launch_argv(sft_dry(sim_env(tmp_path / "one", [T4_580]), LAUNCHER="torchrun"))
    assert flag(one, "--nproc_per_node") == "1"  # one process for one GPU
    cpu = launch_argv(sft_dry(sim_env(tmp_path / "cpu"), LAUNCHER="torchrun", CPU_RANKS="2"))
    assert flag(cpu, "--nproc_per_node") == "2" and flag(cpu, "--ddp_backend") == "gloo"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=2\nb slots=2\n")
    r = sft_dry(env, LAUNCHER="torchrun", HOSTFILE=str(hostfile))
    assert r.returncode == 2 and "HOSTFILE (several nodes) needs DeepSpeed" in r.stderr


@pytest.mark.slow
def test_broken_deepspeed_launches_ddp_and_offload_names_the_true_reason(tmp_path):
    """Issue 40 row 11: an installed DeepSpeed that fails to import gives the torchrun (DDP)
    launch, whose training never imports it (tests/train/test_ddp_fallback.py trains beside such a
    package); what needs DeepSpeed is refused naming the import error."""
    env = sim_env(tmp_path, [T4_550], deepspeed="broken")
    r = sft_dry(env)
    assert r.returncode == 0, r.stderr
    argv = launch_argv(r)
    assert argv[1:4] == ["-u", "-m", "torch.distributed.run"] and "--deepspeed" not in argv
    assert re.search(r"torchrun \(DDP, no DeepSpeed: import deepspeed [\d.]* ?failed: RuntimeError: simulated: "
                     r"CUDA_HOME does not exist", r.stdout) and "a run without --deepspeed never imports it" in r.stdout
    r = sft_dry(env, script=REPO_ROOT / "scripts" / "sft_offload.sh")
    assert r.returncode == 2 and not r.stdout.strip()
    assert re.search(r"\[hardware\] error: optimizer offload \(scripts/sft_offload.sh\) needs DeepSpeed's launcher, "
                     r"and import deepspeed [\d.]* ?failed: RuntimeError: simulated: CUDA_HOME does not exist", r.stderr)
    assert "accelerate" not in r.stderr


@pytest.mark.slow
def test_real_run_stops_when_torch_cannot_use_the_gpu(tmp_path):
    env = {**sim_env(tmp_path, [T4_580]), "PYTHON": sys.executable, "MASTER_PORT": "29999"}
    r = subprocess.run(["bash", str(SFT), "--max_steps", "1"], env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 1 and "torch cannot use them: torch 2.13.0+cpu is a CPU build" in r.stderr
    assert "CUDA_VISIBLE_DEVICES= bash scripts/sft.sh" in r.stderr and not r.stdout.strip()


def test_out_of_memory_names_bszperdev_and_the_value_to_try(tmp_path, monkeypatch, capsys):
    """sft.sh execs the launcher, so the rank that runs out of memory says which BSZPERDEV to
    try (the divisibility rule's largest smaller batch), then the error goes on."""
    import torch

    import train_hw_parallel as thp

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB.")

    monkeypatch.setattr(thp, "_train", oom)
    base = ["--output_dir", str(tmp_path / "run"), "--report_to", "none", "--precision", "fp32"]
    with pytest.raises(torch.OutOfMemoryError):
        thp.main(base + ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "32"])
    assert ("[train] error: out of GPU memory at BSZPERDEV=4 (MAXLEN 2048, --loss fused): try BSZPERDEV=2 "
            "(gradient accumulation becomes 64, TOTALBSZ stays 128)") in capsys.readouterr().out
    with pytest.raises(torch.OutOfMemoryError):
        thp.main(base + ["--per_device_train_batch_size", "1", "--model_max_length", "512"])
    assert "BSZPERDEV=1, the smallest: lower MAXLEN (512)" in capsys.readouterr().out


# ------------------------------------------------------------------ IFEval --backend auto
def test_ifeval_auto_backend_uses_hf_below_capability_7_5(monkeypatch, capsys):
    """run_ifeval and scripts/simulate.py both choose through engines.pick_backend, which
    follows rules.ifeval_engine on CUDA GPUs."""
    import torch

    from smolsft.generation import engines

    monkeypatch.setattr(engines, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    caps = {0: (8, 0), 1: (7, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: caps[i])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: ["NVIDIA A100", "Tesla V100"][i])
    assert engines.pick_backend("auto", "cuda") == "hf"
    assert "Tesla V100 is 7.0: IFEval generates with transformers (--backend hf)" in capsys.readouterr().err
    assert engines.pick_backend("vllm", "cuda") == "vllm"  # asked for explicitly: not overridden
    assert engines.pick_backend("auto", "cpu") == "vllm"
    caps[1] = (7, 5)
    assert engines.pick_backend("auto", "cuda") == "vllm"
    for path in ("ifeval/run_ifeval.py", "scripts/simulate.py"):  # no choice of their own
        text = (REPO_ROOT / path).read_text()
        assert "pick_backend(args.backend, device)" in text and "ifeval_engine" not in text, path


@pytest.mark.slow
def test_dry_run_switches_and_gpu_selection(tmp_path):
    env = sim_env(tmp_path, [A100_535, V100_535])
    r = subprocess.run(["bash", str(SETUP)], env={**env, "PYTHON": sys.executable, "SETUP_DRY_RUN": "1"},
                       capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert r.returncode == 0 and "dry run: nothing was installed" in r.stdout
    assert f"{sys.executable} {CU126}" in pip_lines(r)  # the V100 decides: CUDA 12.6 build
    r = setup_dry(env, CUDA_VISIBLE_DEVICES="0")  # the A100 alone: the CUDA 12.9 builds and vLLM
    assert [x.split(" ", 1)[1] for x in pip_lines(r)][:3] == [CU129, REQS, VLLM129]
    argv = launch_argv(sft_dry(env, NUM_GPUS="1"))  # the first GPU only: bf16, 32 per device
    assert argv[argv.index("--num_gpus") + 1] == "1" and flag(argv, "--bf16") == "True"
    assert flag(argv, "--per_device_train_batch_size") == "32"
    r = sft_dry(env, NUM_GPUS="3")
    assert r.returncode == 2 and "NUM_GPUS=3 but 2 GPU(s) are visible" in r.stderr


def test_build_cpu_ops_is_cached_and_a_failed_build_is_one_line(monkeypatch, capsys):
    """setup.sh has compiled the ops (CPU path), so this finds both in the extensions cache; a
    failing build ends on one line naming the op's build, exit 2, no traceback."""
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    assert cli.main(["--build_cpu_ops"]) == 0
    # (the last line: DeepSpeed's logger, made before this call, may write its accelerator line first)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("[hardware] DeepSpeed's CPU ops: all-reduce (deepspeed_shm_comm) built in ")
    assert "; Adam of the offload launcher (cpu_adam) built in " in last

    def broken(self, verbose=False):
        print("ninja: build stopped: subcommand failed.")
        raise RuntimeError("Error building extension 'deepspeed_shm_comm'")

    monkeypatch.setattr(ShareMemCommBuilder, "load", broken)
    assert cli.main(["--build_cpu_ops"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("[hardware] error: building DeepSpeed's CPU all-reduce op failed: RuntimeError: ")
    assert "deepspeed_shm_comm" in err[0] and "subcommand failed" in err[0]


# ------------------------------------------------------------------ issue 40 rows 3 and 4 through the scripts
MIG_SLICE = ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "8.0", "[N/A]", "550.54.15")


@pytest.mark.slow
def test_a_mig_slice_with_unknown_memory_degrades_with_a_warning(tmp_path):
    """Row 3: python -m smolsft.hardware, setup.sh --dry_run and SFT_DRY_RUN=1 sft.sh go on
    where memory.total is [N/A]: a warning, the given BSZPERDEV, or the stated default."""
    env = sim_env(tmp_path, [MIG_SLICE])
    line = subprocess.run([sys.executable, "-m", "smolsft.hardware"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert line.returncode == 0, line.stderr
    assert "memory unknown" in line.stdout and "[hardware] warning: nvidia-smi reports no memory.total" in line.stderr
    setup = setup_dry(env)
    assert setup.returncode == 0, setup.stderr
    assert f"{sys.executable} {CU129}" in pip_lines(setup)  # the driver and capability decide, not the memory
    r = sft_dry(env)
    assert r.returncode == 0, r.stderr
    assert flag(launch_argv(r), "--per_device_train_batch_size") == "1"
    assert "BSZPERDEV GPU memory unknown: 1, the smallest; set BSZPERDEV to use more" in r.stdout
    assert "sft.sh: warning: nvidia-smi reports no memory.total for GPU 0" in r.stderr
    r = sft_dry(env, BSZPERDEV="8")
    assert r.returncode == 0 and flag(launch_argv(r), "--per_device_train_batch_size") == "8"
    assert flag(launch_argv(r), "--gradient_accumulation_steps") == "16"


@pytest.mark.slow
@pytest.mark.parametrize("fail", ["driver", "hang"])
def test_a_broken_driver_stops_the_scripts_instead_of_a_cpu_run(tmp_path, fail):
    """Row 4 through the scripts: sft.sh (dry run included) and setup.sh stop naming the
    failure; CUDA_VISIBLE_DEVICES= runs on the CPU on purpose. setup.sh's probe is the same
    call as sft.sh's, so its 10 s wait for a hanging tool is sat through once, in sft.sh."""
    env = sim_env(tmp_path, None, fail=fail)
    t0 = time.monotonic()
    r = sft_dry(env)
    assert r.returncode == 2 and not r.stdout.strip(), r.stdout
    assert "[hardware] error: " in r.stderr and "CUDA_VISIBLE_DEVICES= (empty) to run on the CPU on purpose" in r.stderr
    assert ("failed (exit 9: NVIDIA-SMI has failed" if fail == "driver" else "did not answer in 10s") in r.stderr
    assert time.monotonic() - t0 < 60
    if fail == "driver":
        s = setup_dry(env)
        assert s.returncode == 2 and "[hardware] error: " in s.stderr and not pip_lines(s)
    cpu = sft_dry(env, CUDA_VISIBLE_DEVICES="")
    assert cpu.returncode == 0 and cpu.stdout.startswith("sft.sh: CPU, "), cpu.stderr


def test_what_setup_sh_runs_before_any_install_is_standard_library_only():
    code = ("import sys; before = set(sys.modules); import smolsft.hardware.cli, smolsft.launch.cli, "
            "smolsft.train.settings; print(sorted({m.split('.')[0] for m in set(sys.modules) - before} "
            "- set(sys.stdlib_module_names)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 0 and r.stdout.strip() == "['smolsft']", r.stdout + r.stderr
