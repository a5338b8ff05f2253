"""scripts/sft.slurm and ifeval/run.slurm (issue 38, items 1 and 4) driven end to end on one
machine: fake ``sbatch``, ``srun`` and ``scontrol`` on PATH stand in for SLURM. The fake sbatch
reads the script's #SBATCH lines (its command-line options win), sets the variables SLURM sets
and runs a copy of the script from a spool folder, in the foreground; the fake srun starts the
command once per node with that node's SLURM_NODEID; every call is logged. A fake sft.sh
(SFT_SH) records the environment each node's launcher receives."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, script_env
from test_train_hw_parallel import write_chats

JOB_ID = 4242

FAKE_SBATCH = r"""#!/usr/bin/env bash
echo "sbatch $*" >> "$FAKE_SLURM_LOG"
opts=(); while [[ $# -gt 0 && "$1" == -* ]]; do opts+=("$1"); shift; done
script="$1"; shift
nodes=1; gpn=""; cpt=""
for o in $(awk '/^#SBATCH/ {print $2}' "$script") "${opts[@]}"; do
    case "$o" in
        --nodes=*) nodes="${o#*=}" ;; --gpus-per-node=*) gpn="${o#*=}" ;; --cpus-per-task=*) cpt="${o#*=}" ;;
    esac
done
export SLURM_JOB_ID="$FAKE_JOB_ID" SLURM_NNODES="$nodes" SLURM_JOB_NUM_NODES="$nodes" SLURM_SUBMIT_DIR="$PWD"
export SLURM_JOB_NODELIST="node[0-$((nodes - 1))]" SLURM_CPUS_PER_TASK="$cpt"
[[ -n "$gpn" ]] && export SLURM_GPUS_PER_NODE="$gpn"
mkdir -p "$FAKE_SPOOL" && cp "$script" "$FAKE_SPOOL/slurm_script"  # as slurmd does
exec bash "$FAKE_SPOOL/slurm_script" "$@"
"""

FAKE_SRUN = r"""#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_SLURM_LOG"
label=0
while [[ $# -gt 0 && "$1" == -* ]]; do [[ "$1" == --label ]] && label=1; shift; done
pids=()
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
for ((i = 0; i < SLURM_NNODES; i++)); do
    if ((label)); then
        SLURM_NODEID=$i SLURM_PROCID=$i SLURMD_NODENAME=node$i "$@" > >(sed -u "s/^/$i: /") 2>&1 &
    else
        SLURM_NODEID=$i SLURM_PROCID=$i SLURMD_NODENAME=node$i "$@" &
    fi
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
    while :; do wait "$p"; r=$?; kill -0 "$p" 2>/dev/null || break; done
    ((r > rc)) && rc=$r
done
exit $rc
"""

FAKE_SCONTROL = r"""#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
if [[ "$1 $2" == "show hostnames" ]]; then
    if [[ "$3" =~ ^(.*)\[([0-9]+)-([0-9]+)\]$ ]]; then
        for ((i = BASH_REMATCH[2]; i <= BASH_REMATCH[3]; i++)); do echo "${BASH_REMATCH[1]}$i"; done
    else
        tr ',' '\n' <<< "$3"
    fi
fi
"""

# What each node's launcher receives; then, by FAKE_MODE, finish, or wait for the stop file.
FAKE_SFT = r"""#!/usr/bin/env bash
{ for v in NNODES NODE_RANK MASTER_ADDR MASTER_PORT NUM_GPUS SFT_STOP_FILE; do echo "$v=${!v-<unset>}"; done
  echo "ARGS=$*"; } > "$FAKE_OUT/node-$NODE_RANK.env"
case "$FAKE_MODE" in
    finish) exit 0 ;;
    stop) for ((t = 0; t < 600; t++)); do [[ -e "$SFT_STOP_FILE" ]] && exit "$FAKE_STOP_RC"; sleep 0.1; done; exit 9 ;;
esac
"""


@pytest.fixture
def slurm(tmp_path):
    """(environment with the fakes first on PATH, the calls log, the fake sft.sh's output folder)."""
    bin_dir, out = tmp_path / "bin", tmp_path / "nodes"
    bin_dir.mkdir()
    out.mkdir()
    for name, text in [("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "fake_sft.sh").write_text(FAKE_SFT)
    log = tmp_path / "calls.log"
    env = script_env(FAKE_SLURM_LOG=str(log), FAKE_JOB_ID=str(JOB_ID), FAKE_SPOOL=str(tmp_path / "spool"),
                     FAKE_OUT=str(out), FAKE_MODE="finish", FAKE_STOP_RC="75", SFT_SH=str(tmp_path / "fake_sft.sh"),
                     SFT_STOP_FILE=str(tmp_path / "stop"))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    for k in [k for k in env if k.startswith("SLURM_")] + ["MASTER_ADDR", "MASTER_PORT", "NUM_GPUS", "REQUEUE"]:
        env.pop(k, None)
    return env, log, out


def _node_env(out: Path, rank: int) -> dict:
    return dict(line.split("=", 1) for line in (out / f"node-{rank}.env").read_text().splitlines())


@pytest.mark.parametrize("script", ["scripts/sft.slurm", "ifeval/run.slurm"])
def test_help_prints_the_usage(script):
    r = subprocess.run(["bash", script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: sbatch " + script), r.stdout + r.stderr


def test_outside_a_job_it_stops_with_one_line(slurm):
    env, _, _ = slurm
    r = subprocess.run(["bash", "scripts/sft.slurm"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "not inside a SLURM job" in r.stderr and not r.stdout


@pytest.mark.parametrize("gpus_on_node,expected_gpus", [(None, "4"), ("2", "2")])
def test_each_node_launcher_gets_the_job_geometry(slurm, gpus_on_node, expected_gpus):
    env, log, out = slurm
    if gpus_on_node:
        env["SLURM_GPUS_ON_NODE"] = gpus_on_node  # as slurmstepd sets it in each step
    r = subprocess.run(["sbatch", "--nodes=2", "--gpus-per-node=a100:4", "scripts/sft.slurm", "--max_steps", "7"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    nodes = [_node_env(out, k) for k in (0, 1)]
    for rank, node in enumerate(nodes):
        assert node == {"NNODES": "2", "NODE_RANK": str(rank), "MASTER_ADDR": "node0",
                        "MASTER_PORT": str(20000 + JOB_ID % 20000), "NUM_GPUS": expected_gpus,
                        "SFT_STOP_FILE": env["SFT_STOP_FILE"], "ARGS": "--max_steps 7"}, rank
    calls = log.read_text()
    assert "scontrol show hostnames node[0-1]" in calls and "--ntasks-per-node=1" in calls
    assert "--cpus-per-task=8" in calls  # the #SBATCH line's value, passed to the step
    assert "requeue" not in calls and "[slurm] sft.slurm: the step finished" in r.stdout


def test_without_gpus_the_launcher_counts_them_itself(slurm):
    env, _, out = slurm
    script = Path(env["FAKE_SPOOL"]).parent / "cpu.slurm"  # the same job without a GPU request
    script.write_text("".join(line for line in (REPO / "scripts" / "sft.slurm").read_text().splitlines(True)
                              if "--gpus-per-node" not in line))
    r = subprocess.run(["sbatch", str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _node_env(out, 0)["NUM_GPUS"] == "<unset>" and _node_env(out, 0)["NNODES"] == "1"


def _warned_job(env, cmd, out: Path, wait_for: Path):
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not wait_for.exists() and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    p.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends: the batch shell only
    text = p.communicate(timeout=300)[0]
    return p.returncode, text


@pytest.mark.parametrize("requeue", ["1", "0"])
def test_warning_asks_every_node_to_save_and_requeues_when_asked(slurm, requeue):
    env, log, out = slurm
    env.update(FAKE_MODE="stop", REQUEUE=requeue)
    rc, text = _warned_job(env, ["sbatch", "--nodes=2", "scripts/sft.slurm"], out, out / "node-1.env")
    assert rc == 75, text  # the run's status, not the shell killed by SIGUSR1 (138)
    assert "SIGUSR1: asking the run to save" in text
    assert ("scontrol requeue 4242" in log.read_text()) == (requeue == "1"), text
    assert not Path(env["SFT_STOP_FILE"]).exists()  # a requeued job (same id) starts without it


def test_run_that_finishes_after_the_warning_is_not_requeued(slurm):
    env, log, out = slurm
    env.update(FAKE_MODE="stop", FAKE_STOP_RC="0", REQUEUE="1")
    rc, text = _warned_job(env, ["sbatch", "scripts/sft.slurm"], out, out / "node-0.env")
    assert rc == 0 and "requeue" not in log.read_text(), text


def test_evaluation_job_stops_its_step_on_the_warning_and_requeues(slurm, tmp_path):
    env, log, out = slurm
    fake_eval = tmp_path / "fake_run.sh"
    fake_eval.write_text(f'echo "$@" > {out}/eval.args; exec sleep 300\n')
    env.update(IFEVAL_SH=str(fake_eval), REQUEUE="1")
    rc, text = _warned_job(env, ["sbatch", "ifeval/run.slurm", "ckpt/HW2", "outputs/x"], out, out / "eval.args")
    assert (out / "eval.args").read_text().split() == ["ckpt/HW2", "outputs/x"]
    assert rc == 128 + signal.SIGTERM and "scontrol requeue 4242" in log.read_text(), text


@pytest.mark.slow
def test_dry_run_prints_each_nodes_launch_command(slurm):
    env, log, _ = slurm
    del env["SFT_SH"]
    env.update(SFT_DRY_RUN="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["sbatch", "--nodes=2", "--gpus-per-node=0", "scripts/sft.slurm", "--max_steps", "3"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[slurm] step: srun --nodes=2 --ntasks-per-node=1 " in r.stdout and "scripts/slurm_node.sh" in r.stdout
    for rank in (0, 1):
        launch = [line for line in r.stdout.splitlines() if line.startswith(f"{rank}: ") and "train_hw_parallel.py" in line]
        assert len(launch) == 1 and "--max_steps 3" in launch[0], r.stdout


@pytest.mark.slow
def test_real_tiny_run_saves_on_the_warning_requeues_and_the_requeued_job_finishes(slurm, tiny_llama_dir, tmp_path):
    env, log, _ = slurm
    del env["SFT_SH"]
    runs = tmp_path / "runs"
    env.update(MODELPATH=str(tiny_llama_dir), DATAPATH=str(write_chats(tmp_path / "four.jsonl")), OUTPUTPATH=str(runs),
               RUNNAME="r", TOTALBSZ="1", BSZPERDEV="1", PRECISION="fp32", CPU_RANKS="1", OMP_NUM_THREADS="1",
               MAXLEN="256", SAVESTEPS="5", REQUEUE="1", CUDA_VISIBLE_DEVICES="")
    cmd = ["sbatch", "--gpus-per-node=0", "scripts/sft.slurm", "--max_steps", "40", "--data_cache_dir",
           str(tmp_path / "cache")]
    rc, text = _warned_job(env, cmd, runs, runs / "r" / "checkpoint-5" / "trainer_state.json")
    assert rc == 75 and "scontrol requeue 4242" in log.read_text(), text[-4000:]
    stopped = max(int(p.name.split("-")[1]) for p in (runs / "r").glob("checkpoint-*"))
    assert 5 <= stopped < 40 and "[preempt] stopping at step" in text, text[-4000:]
    assert not (runs / "r" / "run_manifest.json").exists()
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # the requeued job
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert f"resuming from {runs / 'r' / f'checkpoint-{stopped}'}" in again.stdout
    assert (runs / "r" / "run_manifest.json").is_file()
