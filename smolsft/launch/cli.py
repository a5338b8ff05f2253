"""scripts/sft.sh's one Python call: its environment variables (and the arguments after them)
-> every setting checked -> the hardware plan -> one plan line and the launch command, then
``exec`` of that command (this process becomes the launcher: signals reach it directly).

    python -m smolsft.launch [TRAINING ARGUMENTS ...]     # what sft.sh runs: exec "$PYTHON" -m smolsft.launch "$@"
    SFT_DRY_RUN=1 python -m smolsft.launch                # print the plan line and the command, run nothing

The variables and their defaults are listed by ``bash scripts/sft.sh --help``. The checks are
the ones the run makes (smolsft.train.settings, smolsft.hardware.rules), before anything starts:
exit 2 with ``[settings] error: ...`` lines, or one ``[hardware] error: ...`` / ``sft.sh: error: ...``
line; exit 1 where nvidia-smi lists GPUs that torch cannot use (not in a dry run).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Optional

from smolsft.hardware import rules
from smolsft.hardware.facts import HardwareError
from smolsft.hardware.probe import probe
from smolsft.hardware.training import sft_plan
from smolsft.launch.command import Settings, hostfile_devices, launcher_argv, training_args
from smolsft.launch.nodes import NodesError, nodes_from_env

CHECKED = ("TOTALBSZ", "BSZPERDEV", "LR", "EPOCHS", "WARMUP", "MAXLEN", "MAXROUNDS", "SAVESTEPS", "TRAINTURNS",
           "PRECISION", "LAUNCHER", "CPU_RANKS", "NUM_GPUS", "NNODES", "NODE_RANK", "MASTER_PORT")


def settings_problems(s: Settings) -> list:
    """Every bad variable or passed flag (smolsft.train.settings' rules), each one line."""
    from smolsft.train.settings import sft_sh_problems

    return sft_sh_problems([f"{k}={s[k]}" for k in CHECKED], s.extra)


def effective(extra: list) -> argparse.Namespace:
    """The passed flags the plan depends on (the last occurrence wins, as in the run's parser)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--model_max_length", type=int)
    ap.add_argument("--loss", default="fused")
    ap.add_argument("--cpu_attention", default="auto")
    return ap.parse_known_args(extra)[0]


def plan_for(s: Settings, nnodes: int, extra: argparse.Namespace) -> dict:
    """The hardware plan (smolsft.hardware.training.sft_plan) for these settings."""
    world = hostfile_devices(s["HOSTFILE"]) if s["HOSTFILE"] else None
    num = lambda k: int(s[k]) if s[k] else None  # noqa: E731
    return sft_plan(probe(), extra.model_max_length or int(s["MAXLEN"]), extra.loss, int(s["TOTALBSZ"]),
                    num("NUM_GPUS"), num("BSZPERDEV"), s["DS_CONFIG"], world, s["LAUNCHER"], nnodes,
                    bool(s["HOSTFILE"]), s["PRECISION"], int(s["CPU_RANKS"]), extra.cpu_attention)


def cpu_threads(env: dict, ranks: int) -> str:
    """OMP_NUM_THREADS for each CPU rank: as set, else this process's cores shared out."""
    return env.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // ranks))


def main(argv: Optional[list] = None, env: Optional[dict] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = dict(os.environ if env is None else env)
    s = Settings(env, list(argv))
    problems = settings_problems(s)
    if problems:
        for p in problems:
            print(f"[settings] error: {p}", file=sys.stderr)
        return 2
    dry = bool(env.get("SFT_DRY_RUN"))
    try:
        nodes = nodes_from_env(env)
        extra = effective(s.extra)
        plan = plan_for(s, nodes.nnodes, extra)
        ga = rules.gradient_accumulation(int(s["TOTALBSZ"]), plan["world"], plan["bszperdev"])
    except (HardwareError, NodesError, ValueError) as e:
        print(f"[hardware] error: {e}", file=sys.stderr)
        return 2
    if plan["warning"]:
        print(f"sft.sh: warning: {plan['warning']}", file=sys.stderr)
    if plan["torch_problem"]:
        if not dry:
            print(f"sft.sh: error: nvidia-smi lists {plan['ngpu']} GPU(s) but torch cannot use them: "
                  f"{plan['torch_problem']}. (To train on the CPU instead: CUDA_VISIBLE_DEVICES= bash scripts/sft.sh)",
                  file=sys.stderr)
            return 1
        print(f"sft.sh: warning: torch cannot use the GPU(s): {plan['torch_problem']} (a real run stops here)",
              file=sys.stderr)
    if not plan["ngpu"]:
        env["OMP_NUM_THREADS"] = cpu_threads(env, plan["ndev"])
        device = (f"CPU, {plan['ndev']} rank(s) x {env['OMP_NUM_THREADS']} thread(s), "
                  f"{plan['precision']}, {plan['attention']}")
    else:
        device = f"{plan['device']}, {plan['precision']}, {plan['attention']}"
    if s["HOSTFILE"]:
        device += f"; {plan['world']} devices from {s['HOSTFILE']}"
    report = "wandb" if env.get("WANDB_API_KEY") or env.get("WANDB_MODE") else "none"
    launch, desc = launcher_argv(env.get("PYTHON") or sys.executable, plan, nodes, s)
    cmd = launch + training_args(s, plan, ga, report)
    per_node = "" if nodes.nnodes == 1 and not s["HOSTFILE"] else (
        f"{nodes.nnodes} node(s) x " if nodes.nnodes > 1 else "")
    batch = (f"batch {s['TOTALBSZ']} = {per_node}{plan['world'] if s['HOSTFILE'] else plan['ndev']} x "
             f"{plan['bszperdev']} x GA {ga} (BSZPERDEV {plan['bsz_note']})")
    print(f"sft.sh: {device}; {desc}; {batch}; IFEval engine {plan['engine']}; "
          f"output {s['OUTPUTPATH']}/{s['RUNNAME']}" + (f"; why: {plan['why']}" if plan["why"] else ""))
    if report == "none":
        print("sft.sh: W&B not configured (set WANDB_API_KEY or WANDB_MODE to use it); logging to the console")
    if dry:
        print(shlex.join(cmd))
        return 0
    print(f"sft.sh: exec {shlex.join(cmd)}", flush=True)
    os.execvpe(cmd[0], cmd, env)
    return 1  # not reached
