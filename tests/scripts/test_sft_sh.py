"""scripts/sft.sh: hardware detection and arguments (dry runs with a fake nvidia-smi), and
the tiny end-to-end run through DeepSpeed ZeRO-2 with two CPU ranks, then its resume."""
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_hardware import A100_535, T4_580, V100_535, sim_env
from test_train_hw_parallel import CHATS, write_chats
from conftest import script_env
from smolsft.files import REPO_ROOT

# Every test here runs a shell script or a CLI in a subprocess.
pytestmark = pytest.mark.slow

SFT = REPO_ROOT / "scripts" / "sft.sh"


def fake_bin(tmp_path: Path, gpus=None, flash_attn=False) -> dict:
    """An environment whose PATH has an nvidia-smi listing ``gpus`` ((name, compute capability,
    memory MiB, driver) tuples; None: no GPU, the tool fails) and, optionally, an importable
    ``flash_attn`` stand-in (test_hardware.sim_env; DeepSpeed is a stand-in too, for speed)."""
    return sim_env(tmp_path, gpus, flash_attn=flash_attn)


def dry_run(env, *args, script=SFT, **overrides):
    env = {**env, "SFT_DRY_RUN": "1", "MASTER_PORT": "29999", "PYTHON": sys.executable, **overrides}
    r = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    return r


def launch_args(r) -> list:
    return shlex.split(r.stdout.strip().splitlines()[-1])


def flag(argv, name):
    """Value of the LAST occurrence of --name (later ones win in HfArgumentParser)."""
    idx = [i for i, a in enumerate(argv) if a == name]
    return argv[idx[-1] + 1] if idx else None


def test_cpu_defaults_and_extra_args_last(tmp_path):
    env = {k: v for k, v in fake_bin(tmp_path).items() if k != "OMP_NUM_THREADS"}  # the derived default
    r = dry_run(env, "--max_steps", "3", "--learning_rate", "1e-4", CPU_RANKS="2", PRECISION="fp32")
    assert r.returncode == 0, r.stderr
    argv = launch_args(r)
    assert argv[argv.index("--num_gpus") + 1] == "2"
    # 128 = 2 ranks x 4 per device x GA 16
    assert flag(argv, "--per_device_train_batch_size") == "4" and flag(argv, "--gradient_accumulation_steps") == "16"
    assert flag(argv, "--learning_rate") == "1e-4" and argv[-4:] == ["--max_steps", "3", "--learning_rate", "1e-4"]
    assert "--bf16" not in argv and "--fp16" not in argv and "--flash_attn" not in argv
    assert flag(argv, "--deepspeed").endswith("ds_configs/zero2_no_offload.json")
    assert flag(argv, "--output_dir") == "ckpt/HW2" and flag(argv, "--model_max_length") == "2048"
    assert flag(argv, "--report_to") == "none" and "W&B not configured" in r.stdout
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared out over the 2 ranks
    assert f"CPU, 2 rank(s) x {threads} thread(s), fp32" in r.stdout and flag(argv, "--precision") == "fp32"


@pytest.mark.parametrize("asked", ["bf16", "fp32", "auto", None])
def test_cpu_precision_reaches_the_launch_line(tmp_path, asked):
    """PRECISION goes to train_hw_parallel.py resolved; auto follows this CPU's own flags
    (read here from /proc/cpuinfo, independently of cpu_precision's torch probe)."""
    from smolsft.hardware.cpu import cpuinfo_bf16_flags

    r = dry_run(fake_bin(tmp_path), **({"PRECISION": asked} if asked else {}))
    assert r.returncode == 0, r.stderr
    argv = launch_args(r)
    if asked in ("auto", None):
        info = Path("/proc/cpuinfo")
        if not info.is_file():
            pytest.skip("no /proc/cpuinfo to check auto against")
        expected = "bf16" if cpuinfo_bf16_flags(info.read_text()) else "fp32"
    else:
        expected = asked
    # train_hw_parallel.py's --cpu_attention auto: cpu_bmm on the CPU in either precision
    assert flag(argv, "--precision") == expected and f"thread(s), {expected}, cpu_bmm" in r.stdout
    assert "--bf16" not in argv  # train_hw_parallel.py turns --precision into the Trainer's flags


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
@pytest.mark.parametrize("asked, expected", [(None, "cpu_bmm"), ("sdpa", "sdpa"), ("cpu_bmm", "cpu_bmm")])
def test_cpu_attention_in_the_launch_line(tmp_path, asked, expected, prec):
    """On the CPU the launch line names the attention train_hw_parallel.py will use,
    --cpu_attention included (both spellings)."""
    for extra in ([] if asked is None else [["--cpu_attention", asked], [f"--cpu_attention={asked}"]]) or [[]]:
        r = dry_run(fake_bin(tmp_path), *extra, PRECISION=prec)
        assert r.returncode == 0, r.stderr
        assert f"thread(s), {prec}, {expected};" in r.stdout, r.stdout


@pytest.mark.parametrize("prec", ["fp32", "bf16"])
def test_cpu_rank_layout_is_one_rank_with_every_core(tmp_path, prec):
    """Without CPU_RANKS: one rank with every core in either precision (faster, measured in
    docs/performance_cpu.md); CPU_RANKS still wins."""
    env = {k: v for k, v in fake_bin(tmp_path).items() if k not in ("OMP_NUM_THREADS", "CPU_RANKS")}
    cores = len(os.sched_getaffinity(0))
    ranks = 1
    r = dry_run(env, PRECISION=prec)
    assert r.returncode == 0, r.stderr
    argv = launch_args(r)
    assert argv[argv.index("--num_gpus") + 1] == str(ranks)
    assert f"CPU, {ranks} rank(s) x {max(1, cores // ranks)} thread(s), {prec}" in r.stdout
    r = dry_run(env, PRECISION=prec, CPU_RANKS="4", OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    assert launch_args(r)[launch_args(r).index("--num_gpus") + 1] == "4"


def test_wandb_only_when_configured(tmp_path):
    r = dry_run(fake_bin(tmp_path), WANDB_MODE="offline")
    assert flag(launch_args(r), "--report_to") == "wandb" and "W&B not configured" not in r.stdout


A6000 = ("NVIDIA RTX A6000", "8.6", 49140, "580.65.06")


@pytest.mark.parametrize("gpus,prec,fa,bsz,ga", [
    # T4: no bf16, no flash-attention; 15 GB: 4 per device (test_hardware's worked arithmetic)
    ([T4_580], "--fp16", False, "4", "32"),
    # A100 80 GB x2, flash_attn not installed: 73728 - 2547 = 71181 / 1450 = 49 -> 32 (divides 64)
    ([A100_535] * 2, "--bf16", False, "32", "2"),
    # 4 x A6000 (48 GB): 44226 - 2162 = 42064 / 1450 = 29 -> 16 (divides 32)
    ([A6000] * 4, "--bf16", True, "16", "2"),
    # mixed: the oldest decides precision; the smaller memory (V100 16 GB) the batch:
    # 14746 - 2547 = 12199 / 1450 = 8.4 -> 8
    ([A100_535, V100_535], "--fp16", False, "8", "8"),
])
def test_gpu_detection(tmp_path, gpus, prec, fa, bsz, ga):
    r = dry_run(fake_bin(tmp_path, gpus, flash_attn=fa))
    assert r.returncode == 0, r.stderr
    argv = launch_args(r)
    assert argv[argv.index("--num_gpus") + 1] == str(len(gpus))
    assert flag(argv, prec) == "True" and ({"--bf16", "--fp16"} - {prec}).isdisjoint(argv)
    assert (flag(argv, "--flash_attn") == "True") is fa
    assert flag(argv, "--per_device_train_batch_size") == bsz and flag(argv, "--gradient_accumulation_steps") == ga


def test_env_overrides_hostfile_and_offload(tmp_path):
    env = fake_bin(tmp_path, [A100_535] * 4)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=4\nnode-b slots=4\n")
    r = dry_run(env, HOSTFILE=str(hostfile), TOTALBSZ="64", BSZPERDEV="2", RUNNAME="x", OUTPUTPATH="out")
    argv = launch_args(r)
    assert flag(argv, "--hostfile") == str(hostfile) and "--num_gpus" not in argv
    assert flag(argv, "--gradient_accumulation_steps") == "4"  # 64 / 8 devices / 2
    assert flag(argv, "--output_dir") == "out/x"
    r = dry_run(env, script=REPO_ROOT / "scripts" / "sft_offload.sh")
    assert flag(launch_args(r), "--deepspeed").endswith("ds_configs/zero2_offload.json")


def test_indivisible_batch_is_an_error(tmp_path):
    r = dry_run(fake_bin(tmp_path), TOTALBSZ="10", BSZPERDEV="4", CPU_RANKS="2")
    assert r.returncode == 2 and "not a multiple" in r.stderr


def _state(run: Path) -> dict:
    return json.loads((run / "trainer_state.json").read_text())


# Two CPU ranks under ZeRO-2 through sft.sh, fp32 (compared to fp32 tolerance), a constant
# LR: with cosine the schedule itself depends on --max_steps, so a run stopped at step 4 and
# extended to 6 could not match a straight 6-step run.
E2E_CHATS = CHATS * 2 + [[("user", "A question nobody answers.")]]  # the last one is dropped (counted)
E2E_ENV = dict(TOTALBSZ="4", BSZPERDEV="1", OMP_NUM_THREADS="1", SAVESTEPS="2", PRECISION="fp32")  # no WANDB_*
E2E_FLAGS = ["--model_max_length", "256", "--learning_rate", "3e-3", "--lr_scheduler_type", "constant"]


def e2e_sft(root: Path, model: Path, data: Path, name: str, steps: int, cache: str = "cache", **node_env):
    """Start ``sft.sh`` for run ``name`` (``steps`` steps) under ``root/out``; returns the process."""
    env = script_env(MODELPATH=str(model), DATAPATH=str(data), OUTPUTPATH=str(root / "out"), RUNNAME=name,
                     **{"CPU_RANKS": "2", **E2E_ENV, **node_env})
    return subprocess.Popen(["bash", str(SFT), *E2E_FLAGS, "--max_steps", str(steps), "--data_cache_dir",
                             str(root / cache)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(p: subprocess.Popen) -> str:
    log = p.communicate(timeout=900)[0]
    assert p.returncode == 0, log[-4000:]
    return log


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, tiny_llama_dir):
    """(root, data, run folder, its log) of one uninterrupted 6-step run: one node, two
    ranks. The reference of the resume test and of the two-node test (one launch for both)."""
    root = tmp_path_factory.mktemp("e2e")
    data = write_chats(root / "chats.jsonl", E2E_CHATS)
    log = finished(e2e_sft(root, tiny_llama_dir, data, "straight", 6))
    return root, data, root / "out" / "straight", log


def _losses(state: dict) -> dict:
    return {h["step"]: h["loss"] for h in state["log_history"] if "loss" in h}


def test_tiny_end_to_end_with_deepspeed_and_resume(straight_run, tiny_llama_dir):
    """4 steps with checkpoints, then the same command with --max_steps 6 resumes at step 4;
    its steps 5-6 match the uninterrupted 6-step run."""
    root, data, straight, _ = straight_run
    log = finished(e2e_sft(root, tiny_llama_dir, data, "resumed", 4))
    run_dir = root / "out" / "resumed"
    assert "8 conversations kept" in log and "dropped_empty_after_normalization=1" in log
    assert _state(run_dir)["global_step"] == 4
    for name in ("model.safetensors", "tokenizer.json", "trainer_state.json", "loss_curve.png", "run_manifest.json"):
        assert (run_dir / name).is_file(), name
    tok_cfg = json.loads((run_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in (tok_cfg.get("chat_template") or (run_dir / "chat_template.jinja").read_text())
    assert json.loads((run_dir / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["data_hash"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert manifest["world_size"] == 2 and manifest["masking"]["conversations_kept"] == 8
    assert 0 < manifest["masking"]["trained_token_fraction"] < 1 and len(manifest["tokenizer_fingerprint"]) == 16
    assert manifest["data_args"]["model_max_length"] == 256 and manifest["git_commit"]

    log = finished(e2e_sft(root, tiny_llama_dir, data, "resumed", 6))
    assert "resuming from" in log and "checkpoint-4" in log
    resumed = _state(run_dir)
    assert resumed["global_step"] == 6
    ref = _losses(_state(straight))
    assert sorted(_losses(resumed)) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert _losses(resumed)[step] == pytest.approx(ref[step], abs=2e-4), step


# ------------------------------------------------------------ every setting checked up front (issue 40 row 10)
@pytest.mark.parametrize("env, args, shown", [
    ({"TRAINTURNS": "Last"}, [], "TRAINTURNS 'Last': expected one of all, last"),
    ({}, ["--train_turns", "Last"], "--train_turns 'Last': expected one of all, last"),
    ({}, ["--cpu_attention=eager"], "--cpu_attention 'eager': expected one of auto, sdpa, cpu_bmm"),
    ({"PRECISION": "fp8"}, [], "PRECISION 'fp8': expected one of auto, fp32, bf16"),
    ({"NNODES": "0"}, [], "NNODES '0': expected an integer >= 1"),
])
def test_bad_choices_are_refused_before_anything_starts(tmp_path, env, args, shown):
    """TRAINTURNS=Last passed the old up-front check and the dry run, and the real run
    stopped 19 s later on argparse's `invalid choice`: now the launch refuses it at once,
    against the constants the training script's own `choices` come from."""
    r = dry_run(fake_bin(tmp_path), *args, **env)
    assert r.returncode == 2 and f"[settings] error: {shown}" in r.stderr, r.stderr
    assert not r.stdout.strip()


# ------------------------------------------------------------ several nodes without ssh (issue 38 point 2)
def fake_scontrol(bin_dir: Path, hosts) -> None:
    (bin_dir / "scontrol").write_text("#!/bin/sh\n[ \"$1 $2\" = \"show hostnames\" ] || exit 1\n"
                                      + "".join(f"echo {h}\n" for h in hosts))
    (bin_dir / "scontrol").chmod(0o755)


def test_nodes_from_slurm_print_the_per_node_torchrun(tmp_path):
    """SFT_DRY_RUN=1 under a simulated SLURM job of 2 nodes x 2 GPUs: one torchrun per node,
    c10d rendezvous at the head node that `scontrol show hostnames` names, --deepspeed under it,
    gradient accumulation over all 4 devices."""
    env = fake_bin(tmp_path, [A6000] * 2)
    fake_scontrol(tmp_path / "bin", ["gpu-node-07", "gpu-node-08"])
    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu-node-[07-08]", "SLURM_JOB_ID": "4242"}
    argvs = []
    for node in ("0", "1"):
        r = dry_run({**env, **slurm, "SLURM_NODEID": node}, TOTALBSZ="32", BSZPERDEV="2", MASTER_PORT="")
        assert r.returncode == 0, r.stderr
        argv = launch_args(r)
        argvs.append(argv)
        assert argv[1:4] == ["-u", "-m", "torch.distributed.run"] and flag(argv, "--nnodes") == "2"
        assert flag(argv, "--node_rank") == node and flag(argv, "--nproc_per_node") == "2"
        assert flag(argv, "--rdzv_backend") == "c10d" and flag(argv, "--rdzv_endpoint") == "gpu-node-07:29500"
        assert flag(argv, "--rdzv_id") == "4242" and flag(argv, "--rdzv_conf") == f"is_host={int(node == '0')}"
        assert flag(argv, "--deepspeed").endswith("zero2_no_offload.json") and "--num_gpus" not in argv
        assert flag(argv, "--gradient_accumulation_steps") == "4"  # 32 / (2 nodes x 2 GPUs x 2)
        assert "batch 32 = 2 node(s) x 2 x 2 x GA 4" in r.stdout
    assert [a for a in argvs[0] if a not in ("0", "1", "is_host=1", "is_host=0")] == \
        [a for a in argvs[1] if a not in ("0", "1", "is_host=1", "is_host=0")]
    # the torchrun names win over SLURM's; a rank outside the nodes, or no address, is refused
    r = dry_run({**env, **slurm, "SLURM_NODEID": "1"}, MASTER_ADDR="10.0.0.1", MASTER_PORT="6000", NODE_RANK="0")
    assert flag(launch_args(r), "--rdzv_endpoint") == "10.0.0.1:6000" and flag(launch_args(r), "--node_rank") == "0"
    r = dry_run(env, NNODES="2", NODE_RANK="2", MASTER_ADDR="h")
    assert r.returncode == 2 and "NODE_RANK 2: expected 0 to NNODES - 1 = 1" in r.stderr
    r = dry_run(env, NNODES="2", MASTER_PORT="")
    assert r.returncode == 2 and "NNODES=2 needs MASTER_ADDR" in r.stderr
    # without DeepSpeed: DDP on each node; HOSTFILE and NNODES together are refused
    r = dry_run(env, NNODES="2", MASTER_ADDR="h", LAUNCHER="torchrun")
    assert "--deepspeed" not in launch_args(r) and flag(launch_args(r), "--nnodes") == "2"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a slots=2\n")
    r = dry_run(env, NNODES="2", MASTER_ADDR="h", HOSTFILE=str(hostfile))
    assert r.returncode == 2 and "HOSTFILE and NNODES > 1" in r.stderr


def test_two_nodes_on_localhost_train_the_losses_of_one_node_with_two_ranks(straight_run, tiny_llama_dir):
    """Two sft.sh processes, NNODES=2 NODE_RANK=0/1 MASTER_ADDR=127.0.0.1, one CPU rank each
    (gloo), against one sft.sh with two ranks (the module's straight run): the same per-step
    losses and weights, with the default launcher (DeepSpeed ZeRO-2 under each node's torchrun
    against DeepSpeed's own launcher on one node). DDP across nodes is the same rendezvous
    with DDP on top: its launch line is checked in test_nodes_from_slurm_print_the_per_node_torchrun,
    and DDP on two ranks against ZeRO-2 in tests/train/test_ddp_fallback.py."""
    from safetensors.torch import load_file

    from test_train_hw_parallel import _free_port

    root, data, straight, _ = straight_run
    nodes = {"NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "CPU_RANKS": "1"}
    procs = [e2e_sft(root, tiny_llama_dir, data, "two_nodes", 6, f"cache{r}", **nodes, NODE_RANK=r) for r in "01"]
    logs = [finished(p) for p in procs]
    assert "torchrun, node 0 of 2 (rendezvous 127.0.0.1:" in logs[0] and "node 1 of 2" in logs[1]
    assert "DeepSpeed ZeRO-2" in logs[0]
    two_dir = root / "out" / "two_nodes"
    two, ref = _losses(_state(two_dir)), _losses(_state(straight))
    print("per-step loss (2 nodes x 1 rank, 1 node x 2 ranks):", [(two[k], ref[k]) for k in sorted(ref)])
    assert sorted(two) == sorted(ref) == [1, 2, 3, 4, 5, 6]
    assert [two[k] for k in sorted(two)] == pytest.approx([ref[k] for k in sorted(ref)], abs=1e-4)
    assert len(set(ref.values())) == 6  # the steps moved the model: the comparison is not of equal numbers
    assert json.loads((two_dir / "run_manifest.json").read_text())["world_size"] == 2
    a, b = (load_file(str(d / "model.safetensors")) for d in (two_dir, straight))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_help_lists_every_variable_the_launch_reads():
    from smolsft.launch.command import DEFAULTS

    r = subprocess.run(["bash", str(SFT), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("Usage: ")
    for name in [*DEFAULTS, "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "SFT_DRY_RUN", "PYTHON"]:
        assert name in r.stdout, name


# ------------------------------------------------------------ one-line errors, not tracebacks (issue 23 row 10)
def test_bad_bytes_through_sft_sh_is_one_line(tiny_llama_dir, tmp_path):
    model = tiny_llama_dir
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    b'{"conversations": [{"role": "user", "content": "h\xe9"}]}\n')
    env = {**os.environ, "MODELPATH": str(model), "DATAPATH": str(bad), "OUTPUTPATH": str(tmp_path / "out"),
           "TOTALBSZ": "1", "BSZPERDEV": "1", "CPU_RANKS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(SFT), "--max_steps", "1",
                        "--data_cache_dir", str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0
    assert f"[train] error: {bad}:2: not UTF-8 (byte 0xe9 at column " in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "UnicodeDecodeError" not in r.stdout + r.stderr
