"""The launch command of one training run: launcher, per-device batch, gradient accumulation
and the training arguments, from the settings and the hardware plan. Standard library only."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from smolsft.hardware.facts import REPO_ROOT
from smolsft.launch.nodes import Nodes

TRAIN_SCRIPT = REPO_ROOT / "train_hw_parallel.py"

# sft.sh's variables and their defaults (scripts/sft.sh --help lists them).
DEFAULTS = {"MODELPATH": "SmolLM2-135M", "DATAPATH": "smol-smoltalk-6k.json", "OUTPUTPATH": "ckpt", "RUNNAME": "HW2",
            "TOTALBSZ": "128", "EPOCHS": "3", "LR": "2e-5", "WARMUP": "0.1", "MAXLEN": "2048", "MAXROUNDS": "5",
            "TRAINTURNS": "all", "SAVESTEPS": "200", "DS_CONFIG": str(REPO_ROOT / "ds_configs" / "zero2_no_offload.json"),
            "LAUNCHER": "auto", "CPU_RANKS": "1", "PRECISION": "auto", "BSZPERDEV": "", "NUM_GPUS": "",
            "HOSTFILE": ""}


@dataclass
class Settings:
    """sft.sh's variables (strings, defaults filled) and the arguments passed on (``extra``)."""
    env: dict
    extra: list = field(default_factory=list)

    def __getitem__(self, name: str) -> str:
        return self.env.get(name) or DEFAULTS.get(name, "")

    def data_path(self) -> str:
        """DATAPATH; a relative path that is not under the current folder may be the repository's."""
        data = self["DATAPATH"]
        if not os.path.exists(data) and (REPO_ROOT / data).exists():
            return str(REPO_ROOT / data)
        return data


def hostfile_devices(path: str) -> int:
    """The devices a DeepSpeed hostfile lists: the sum of its ``slots=N`` (raises ValueError naming the line)."""
    total = 0
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        slots = [w.split("=", 1)[1] for w in line.split() if w.startswith("slots=")]
        if len(slots) != 1 or not slots[0].isdigit():
            raise ValueError(f"HOSTFILE {path}:{n}: expected 'host slots=N', got {line!r}")
        total += int(slots[0])
    return total


def launcher_argv(python: str, plan: dict, nodes: Nodes, s: Settings) -> tuple:
    """(argv up to and including the training script and --deepspeed, a description)."""
    ds_config = s["DS_CONFIG"]
    script = str(TRAIN_SCRIPT)
    if plan["launcher"] == "deepspeed":
        where = ["--hostfile", s["HOSTFILE"]] if s["HOSTFILE"] else ["--num_gpus", str(plan["ndev"])]
        argv = [python, "-u", "-m", "deepspeed.launcher.runner", *where, "--master_port", str(nodes.master_port),
                script, "--deepspeed", ds_config]
        return argv, f"DeepSpeed ZeRO-2 ({os.path.basename(ds_config)})"
    argv = [python, "-u", "-m", "torch.distributed.run"]
    if nodes.nnodes > 1:
        # c10d rendezvous at node 0; is_host tells which launcher serves the store, so two
        # "nodes" on one machine (both matching 127.0.0.1) do not both try.
        argv += ["--nnodes", str(nodes.nnodes), "--node_rank", str(nodes.node_rank),
                 "--nproc_per_node", str(plan["ndev"]), "--rdzv_backend", "c10d",
                 "--rdzv_endpoint", f"{nodes.master_addr}:{nodes.master_port}", "--rdzv_id", nodes.rdzv_id,
                 "--rdzv_conf", f"is_host={int(nodes.node_rank == 0)}"]
        where = f"torchrun, node {nodes.node_rank} of {nodes.nnodes} (rendezvous {nodes.master_addr}:{nodes.master_port})"
    else:
        argv += ["--nproc_per_node", str(plan["ndev"]), "--master_port", str(nodes.master_port)]
        where = "torchrun"
    argv.append(script)
    if plan["with_deepspeed"]:
        return argv + ["--deepspeed", ds_config], f"{where}, DeepSpeed ZeRO-2 ({os.path.basename(ds_config)})"
    return argv, f"{where} (DDP, no DeepSpeed: {plan['launcher_why']})"


def hardware_args(plan: dict) -> list:
    """The training arguments the plan implies: precision, attention, CPU specifics."""
    if plan["ngpu"]:
        args = {"bf16": ["--bf16", "True"], "fp16": ["--fp16", "True"]}.get(plan["precision"], [])
        return args + (["--flash_attn", "True"] if plan["attention"] == "flash_attention_2" else [])
    args = ["--precision", plan["precision"], "--dataloader_pin_memory", "False"]
    return args + ([] if plan["with_deepspeed"] else ["--ddp_backend", "gloo"])


def training_args(s: Settings, plan: dict, ga: int, report: str) -> list:
    """train_hw_parallel.py's arguments: the variables, the plan's, then ``extra`` (last: they win)."""
    return ["--model_name_or_path", s["MODELPATH"], "--data_path", s.data_path(),
            "--output_dir", f"{s['OUTPUTPATH']}/{s['RUNNAME']}", "--run_name", s["RUNNAME"],
            "--num_train_epochs", s["EPOCHS"], "--per_device_train_batch_size", str(plan["bszperdev"]),
            "--gradient_accumulation_steps", str(ga), "--learning_rate", s["LR"], "--warmup_steps", s["WARMUP"],
            "--lr_scheduler_type", "cosine", "--weight_decay", "0.0", "--model_max_length", s["MAXLEN"],
            "--max_rounds", s["MAXROUNDS"], "--train_turns", s["TRAINTURNS"],
            "--train_sampling_strategy", "group_by_length", "--logging_steps", "1", "--save_strategy", "steps",
            "--save_steps", s["SAVESTEPS"], "--save_total_limit", "2", "--dataloader_num_workers", "0",
            "--report_to", report, *hardware_args(plan), *s.extra]
