"""Hyperparameter sweep: train + IFEval (or IFBench) for every configuration of a grid, one after the other.

Each comma-separated option is one axis of the grid; the sweep runs the Cartesian product:

    python scripts/sweep.py --lr 2e-5,5e-5,1e-4 --scheduler cosine,linear
    python scripts/sweep.py --lr 1e-5,2e-5 --epochs 1,3 --full          # GPU: course sizes
    python scripts/sweep.py --lr 2e-5,5e-5 --benchmark ifbench --out sweep_ifbench   # scored on IFBench

Every configuration trains with scripts/sft.sh into OUT/runs/NAME/ckpt and is scored with
ifeval/run.sh into OUT/runs/NAME/ifeval (OUT/runs/NAME/ifbench with --benchmark ifbench);
its row, which names the benchmark, is saved in OUT/runs/NAME/result.json. One sweep folder
holds one benchmark: rerunning into OUT with another --benchmark is refused before anything
runs (rows written before IFBench existed are IFEval's). One sweep per folder: while a sweep
runs, OUT is locked and a second sweep into it is refused at once, naming the first.
The base model (--model) is scored once into OUT/base/BENCHMARK (--base none: not at all; --base DIR: a
scored folder), and every run is compared with it and with the best run by a paired test over
the same prompts (docs/evaluation.md). --seeds N trains each configuration N times (seeds
42, 43, ...; runs NAME_seedS) and the table shows the spread across seeds beside the
evaluation interval. A configuration that fails is recorded in the table (status failed,
its error in one line) and the sweep goes on; a rerun tries it again, and the sweep exits 1
at the end while any failed. Values that cannot work (e.g. a --model_max_length that leaves
no sample a trained token) are refused before anything trains.
The sweep is resumable: a configuration whose result.json exists is skipped on rerun, unless
it was made with other shared settings (model, data, steps, prompts, ...): then the rerun stops
before anything trains (and a killed training resumes from its last checkpoint, as sft.sh
does). At the end the script writes OUT/results.csv and OUT/results.md (configuration, seed, status, final
training loss, the benchmark and its four metrics, the plotted metric's 95% interval, the paired tests, wall
time) and OUT/sweep_<metric>.png (the metric against each swept value).

Defaults are a small CPU configuration: 16 steps of total
batch 8 at model_max_length 512 on data/demo_sft.json, scored on the first 24 prompts (IFEval:
of the 100-prompt set; IFBench: of its 294) with 160 new tokens. --full switches to the course
configuration (smol-smoltalk-6k.json, whole epochs, all prompts, 1024 tokens).
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
from smolsft.report.reports import BENCHMARKS, METRIC_NAMES, ResultError, load_summary, logged_losses, one_benchmark
from smolsft.report.sweep_table import annotate, write_tables
from smolsft.data.sft import data_fingerprint
from smolsft.lock import FolderLockedError, folder_lock
from ifeval.run_ifeval import DEFAULT_INPUT
from smolsft.files import resolve_path
from smolsft.train.settings import settings_problems, value_problem

# grid axis -> (flag of train_hw_parallel.py or sft.sh variable, parser)
AXES = {
    "lr": ("--learning_rate", float),
    "epochs": ("--num_train_epochs", float),
    "warmup_ratio": ("WARMUP", float),  # sft.sh passes it on as --warmup_steps (below 1: a ratio)
    "scheduler": ("--lr_scheduler_type", str),
    "total_bsz": ("TOTALBSZ", int),
    "model_max_length": ("--model_max_length", int),
}


# grid axis -> its check in training_settings
AXIS_CHECKS = {"lr": "learning_rate", "epochs": "num_train_epochs", "warmup_ratio": "warmup_ratio",
               "scheduler": "lr_scheduler_type", "total_bsz": "total_bsz", "model_max_length": "model_max_length"}


class SweepError(RuntimeError):
    """A training or evaluation run of the sweep failed (names the config and its log)."""


def parse_axis(name: str, text: str) -> list:
    kind = AXES[name][1]
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"--{name}: cannot read '{text}' as comma-separated {kind.__name__} values ({e})")
    if not values:
        raise SystemExit(f"--{name}: no values given")
    return values


def grid_problems(args) -> tuple[dict, list[str]]:
    """Every value of every axis read and checked (training_settings' rules), the
    shared values (``--bsz_per_dev``, ``--max_steps`` with each ``--epochs`` value,
    ``--prompts``, ``--max_tokens``) too; returns ``(grid, problems)`` with one line per
    bad value, so that a sweep stops before its first configuration trains (the total
    batches are checked against the devices by :func:`batch_problems`)."""
    grid, problems = {}, []
    for k, (_, kind) in AXES.items():
        texts = [v.strip() for v in getattr(args, k).split(",") if v.strip()]
        if not texts:
            problems.append(f"--{k}: no values given")
        grid[k] = []
        for t in texts:
            try:
                v = kind(t)
            except ValueError:
                problems.append(f"--{k} {t!r}: not {'an integer' if kind is int else 'a number'}")
                continue
            p = value_problem(AXIS_CHECKS[k], v, f"--{k}")
            problems += [p] if p else []
            grid[k] += [] if p else [v]
    shared = {"bsz_per_dev": args.bsz_per_dev, "prompts": args.prompts, "max_tokens": args.max_tokens}
    problems += settings_problems(shared)
    for e in grid["epochs"]:
        problems += [p for p in settings_problems({"num_train_epochs": e, "max_steps": args.max_steps},
                                                  {"num_train_epochs": "--epochs"}) if "trains nothing" in p]
    return grid, list(dict.fromkeys(problems))


def batch_problems(args, totals) -> list[str]:
    """Each total batch of ``totals`` checked by scripts/sft.sh itself (a dry run: it knows
    this machine's devices and divides the batch among them), with the per-device batch
    :func:`run_config` would give it and the extra ``--train_args``; one line per problem."""
    problems = []
    if args.bsz_per_dev is not None and args.bsz_per_dev >= 1:
        for total in sorted(totals):
            env = dict(os.environ, MODELPATH=args.model, DATAPATH=args.data, SFT_DRY_RUN="1", MASTER_PORT="29500",
                       TOTALBSZ=str(total), BSZPERDEV=str(min(args.bsz_per_dev, total)))
            r = subprocess.run(["bash", "scripts/sft.sh", *args.train_args], cwd=REPO, env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                lines = [ln.split("error: ", 1)[-1].removeprefix("sft.sh: ") for ln in r.stderr.splitlines()
                         if "error" in ln or "not a multiple" in ln] or \
                    [r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"]
                problems += [f"--total_bsz {total}: scripts/sft.sh refuses it: {ln}" if "TOTALBSZ" in ln
                             else f"scripts/sft.sh: {ln}" for ln in lines]
    return list(dict.fromkeys(problems))  # a bad --train_args value is named once


def config_name(cfg: dict) -> str:
    """A stable folder name for a configuration (the same grid point always maps to it)."""
    short = {"lr": "lr", "epochs": "ep", "warmup_ratio": "wu", "scheduler": "", "total_bsz": "bs", "model_max_length": "len"}
    return "_".join(f"{short[k]}{cfg[k]:g}" if isinstance(cfg[k], float) else f"{short[k]}{cfg[k]}" for k in AXES)


def run_names(cfg: dict, seeds: list) -> list[tuple[str, object]]:
    """(run folder name, seed) of each training of ``cfg``: its :func:`config_name` alone
    when it trains once with the default seed (``seeds`` ``[None]``), else ``NAME_seedS``."""
    name = config_name(cfg)
    return [(name if seed is None else f"{name}_seed{seed}", seed) for seed in seeds]


def sweep_seeds(n: int) -> list:
    """The seeds of ``--seeds n``: ``[None]`` (train_hw_parallel.py's default) for 1, else 42, 43, ..."""
    return [None] if n == 1 else [42 + i for i in range(n)]


def one_line_error(err: "SweepError") -> str:
    """The line a failed run leaves in the table: what failed (its exit status and log) and
    the cause from its log, preferring a program's own ``error:`` line (``[train] error: ...``,
    argparse's ``...: error: ...``) over a launcher's report that a rank exited."""
    what, _, tail = str(err).partition(":\n")
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    own = [ln for ln in lines if re.search(r"(^|\] |: )error: ", ln)]
    errs = own or [ln for ln in lines if "error" in ln.lower()]
    cause = (errs or lines or [""])[-1][:300]
    return (f"{what}: {cause}" if cause else what).replace("|", "/")


def run_logged(cmd: list[str], env: dict, log_path: Path, what: str) -> None:
    """Run a command with its output in a log file; on failure show the log's tail."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        tail = "".join(open(log_path, encoding="utf-8", errors="replace").readlines()[-30:])
        raise SweepError(f"{what} failed (exit {rc}); log {log_path}:\n{tail}")


def shared_settings(args) -> dict:
    """What every configuration of this sweep shares and its folder name does not say
    (model, data content, steps, batch per device, prompts, extra training arguments)."""
    return {"model": args.model, "data": args.data, "data_hash": data_fingerprint(resolve_path(args.data)),
            "bsz_per_dev": args.bsz_per_dev, "max_steps": args.max_steps, "prompt_set": args.prompt_set,
            "prompts": args.prompts, "max_tokens": args.max_tokens, "train_args": list(args.train_args)}


def check_reusable(row: dict, shared: dict, result: Path) -> None:
    """Refuse to reuse a finished configuration's result made with other shared settings
    (it would mix two sweeps in one table); a result from an older version without the
    record is reused with a warning."""
    old = row.get("shared_settings")
    if old is None:
        tqdm.write(f"[sweep] warning: {result} does not record the settings it was made with; reusing it unchecked")
        return
    diffs = [f"  {k}: {json.dumps(old.get(k))} -> {json.dumps(v)}" for k, v in shared.items() if old.get(k) != v]
    if diffs:
        raise SystemExit(f"{result} was made with other settings; reusing it would mix two sweeps:\n"
                         + "\n".join(diffs) + f"\nUse another --out, or delete {result.parent} to run it again.")


def run_config(cfg: dict, args, run_root: Path, shared: dict, seed=None) -> dict:
    """Train (with ``seed``, ``None``: the default) and evaluate one configuration; returns its
    result row (also saved to result.json), which records ``shared`` (:func:`shared_settings`)."""
    run_root.mkdir(parents=True, exist_ok=True)
    log = run_root / "run.log"
    t0 = time.time()
    bsz_per_dev = min(args.bsz_per_dev, int(cfg["total_bsz"]))  # a small total batch fits one micro-batch
    env = dict(os.environ, MODELPATH=args.model, DATAPATH=args.data, OUTPUTPATH=str(run_root.resolve()),
               RUNNAME="ckpt", BSZPERDEV=str(bsz_per_dev))
    train_args = []
    for k, (flag, _) in AXES.items():
        if flag.startswith("--"):
            train_args += [flag, str(cfg[k])]
        else:  # an sft.sh variable
            env[flag] = str(cfg[k])
    if args.max_steps:
        train_args += ["--max_steps", str(args.max_steps)]
    if seed is not None:
        train_args += ["--seed", str(seed)]
    train_args += args.train_args
    run_logged(["bash", "scripts/sft.sh", *train_args], env, log, f"training {run_root.name}")
    ckpt = run_root / "ckpt"
    losses = logged_losses(ckpt)
    loss = losses[-1] if losses else None
    t_train = time.time() - t0
    scored = run_root / args.benchmark
    summary = score(ckpt, scored, args, log, f"{BENCHMARKS[args.benchmark]} of {run_root.name}")
    row = {"name": run_root.name, "config": config_name(cfg), "seed": seed, **cfg, "status": "ok",
           "final_train_loss": loss, "benchmark": args.benchmark,
           **{m: summary[m] for m in METRIC_NAMES}, "num_prompts": summary.get("num_prompts"),
           "intervals": summary.get("intervals"),
           "train_seconds": round(t_train, 1), "wall_seconds": round(time.time() - t0, 1),
           "shared_settings": shared}
    # Replaced atomically: a kill while writing it must not leave a half row that a rerun reuses.
    tmp = run_root / f"result.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(row, indent=1) + "\n")
    os.replace(tmp, run_root / "result.json")
    return row


def score(model: Path, scored: Path, args, log: Path, what: str) -> dict:
    """Score ``model`` into ``scored`` with ifeval/run.sh (the sweep's prompts and tokens)."""
    ev = ["bash", "ifeval/run.sh", str(Path(model).resolve()) if Path(model).exists() else str(model),
          str(scored.resolve()), "--benchmark", args.benchmark, "--max_tokens", str(args.max_tokens)]
    if args.prompt_set:  # else the benchmark's default prompt set
        ev += ["--input_data", args.prompt_set]
    if args.prompts:
        ev += ["--limit", str(args.prompts)]
    run_logged(ev, dict(os.environ), log, what)
    return load_summary(scored)


def base_run(args, out: Path, shared: dict) -> tuple[Optional[Path], Optional[dict]]:
    """(scored folder, summary) of the base model that every run is compared with:
    ``--base none``: none; ``--base DIR``: that folder; else OUT/base/BENCHMARK, scored once
    (reused while OUT/base/result.json records the same shared settings)."""
    if args.base == "none":
        return None, None
    if args.base != "auto":
        return Path(args.base), load_summary(args.base)
    root = out / "base"
    scored, record = root / args.benchmark, root / "result.json"
    if record.exists() and (scored / "summary.json").exists():
        check_reusable(json.loads(record.read_text()), shared, record)
        return scored, load_summary(scored)
    root.mkdir(parents=True, exist_ok=True)
    tqdm.write(f"[sweep] scoring the base model {args.model} into {scored}")
    summary = score(Path(args.model), scored, args, root / "run.log", f"{BENCHMARKS[args.benchmark]} of the base model")
    record.write_text(json.dumps({"model": args.model, "shared_settings": shared}, indent=1) + "\n")
    return scored, summary


def plot(rows: list[dict], swept: list[str], metric: str, out: Path, benchmark: str = "IFEval") -> Path:
    """One panel per swept axis: the metric of every run against that axis's value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    axes_to_plot = swept or ["lr"]
    fig, axs = plt.subplots(1, len(axes_to_plot), figsize=(4.5 * len(axes_to_plot), 3.6), squeeze=False)
    for ax, key in zip(axs[0], axes_to_plot):
        values = sorted({r[key] for r in rows}, key=lambda v: (isinstance(v, str), v))
        pos = {v: i for i, v in enumerate(values)}
        ax.scatter([pos[r[key]] for r in rows], [r[metric] for r in rows])
        ax.set_xticks(range(len(values)), [f"{v:g}" if isinstance(v, float) else str(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{benchmark} {metric} per configuration ({len(rows)} runs)")
    fig.tight_layout()
    path = out / f"sweep_{metric}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="course configuration (GPU): see below")
    ap.add_argument("--lr", default=None, help="learning rates, e.g. 2e-5,5e-5 [5e-5; --full 2e-5]")
    ap.add_argument("--epochs", default="1", help="epochs [1; --full 3]")
    ap.add_argument("--warmup_ratio", default="0.1")
    ap.add_argument("--scheduler", default="cosine", help="lr_scheduler_type values, e.g. cosine,linear")
    ap.add_argument("--total_bsz", default=None, help="total batch sizes [8; --full 128]")
    ap.add_argument("--model_max_length", default=None, help="[512; --full 2048]")
    ap.add_argument("--bsz_per_dev", type=int, default=None, help="per-device batch [4; --full 8]")
    ap.add_argument("--max_steps", type=int, default=None, help="cap on optimizer steps, 0 = whole epochs [16; --full 0]")
    ap.add_argument("--model", default="SmolLM2-135M")
    ap.add_argument("--data", default=None, help="[data/demo_sft.json; --full smol-smoltalk-6k.json]")
    ap.add_argument("--benchmark", choices=sorted(BENCHMARKS), default="ifeval",
                    help="what each configuration is scored on (ifeval/run.sh --benchmark) [ifeval]")
    ap.add_argument("--prompt_set", default=None,
                    help=f"prompt file [IFEval: {DEFAULT_INPUT}; IFBench: its 294 prompts]")
    ap.add_argument("--prompts", type=int, default=None, help="first N prompts, 0 = all [24; --full 0]")
    ap.add_argument("--max_tokens", type=int, default=None, help="[160; --full 1024]")
    ap.add_argument("--metric", default="prompt_level_strict_acc", choices=METRIC_NAMES, help="metric to plot")
    ap.add_argument("--seeds", type=int, default=1,
                    help="train each configuration with this many seeds (42, 43, ...) [1: the default seed]")
    ap.add_argument("--base", default="auto",
                    help="what each run is compared with: auto (score --model into OUT/base), none, or a scored "
                         "folder [auto]")
    ap.add_argument("--out", default="sweep_out")
    ap.add_argument("--train_args", nargs=argparse.REMAINDER, default=[],
                    help="everything after this flag is passed to train_hw_parallel.py (last)")
    args = ap.parse_args(argv)
    small = {"lr": "5e-5", "total_bsz": "8", "model_max_length": "512", "bsz_per_dev": 4, "max_steps": 16,
             "data": "data/demo_sft.json", "prompts": 24, "max_tokens": 160}
    course = {"lr": "2e-5", "total_bsz": "128", "model_max_length": "2048", "bsz_per_dev": 8, "max_steps": 0,
              "data": "smol-smoltalk-6k.json", "prompts": 0, "max_tokens": 1024}
    for k, v in (course if args.full else small).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.full and args.epochs == "1":
        args.epochs = "3"
    if not (REPO / args.data).exists() and not Path(args.data).exists():
        raise SystemExit(f"training data {args.data} not found")
    if args.prompt_set is None and args.benchmark == "ifeval":
        args.prompt_set = DEFAULT_INPUT

    if args.seeds < 1:
        raise SystemExit(f"[sweep] error: --seeds {args.seeds}: at least 1")
    grid, problems = grid_problems(args)  # reported below, with the total batches' problems
    swept = [k for k, v in grid.items() if len(v) > 1]
    configs = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    out = Path(args.out)
    earlier, shared = finished_rows(args, configs, out)
    todo = [cfg for cfg in configs if any(n not in earlier for n, _ in run_names(cfg, sweep_seeds(args.seeds)))]
    # Total batches and lengths of the configurations still to train, against this machine and the data.
    problems += batch_problems(args, {cfg["total_bsz"] for cfg in todo})
    problems += length_check(args, {cfg["model_max_length"] for cfg in todo})
    if problems:  # before the lock: a refused sweep creates nothing
        raise SystemExit("[sweep] error: bad values, nothing trained:\n  " + "\n  ".join(problems))
    # One sweep per folder: a second one is refused at once, naming the first.
    try:
        with folder_lock(out, "sweep"):
            _sweep(args, grid, swept, configs, out, earlier, shared)
    except FolderLockedError as e:
        raise SystemExit(f"[sweep] error: {e}") from None


TRAIN_FLAGS = {"--mask_mode": "mask_mode", "--train_turns": "train_turns", "--max_rounds": "max_rounds",
               "--conversation_field": "conversation_field"}


def length_check(args, lengths) -> list[str]:
    """Each ``--model_max_length`` of ``lengths`` at which no sample of the data would keep a
    trained token (``smolsft.data.lengths``, with the masking settings of ``--train_args``)."""
    from smolsft.chat.tokenization import load_tokenizer
    from smolsft.data.lengths import length_problems

    if not lengths:
        return []
    ta, masking, truncation = list(args.train_args), {}, "right"
    for i, flag in enumerate(ta[:-1]):
        if flag in TRAIN_FLAGS:
            masking[TRAIN_FLAGS[flag]] = int(ta[i + 1]) if flag == "--max_rounds" else ta[i + 1]
        elif flag == "--truncation_side":
            truncation = ta[i + 1]
    try:
        tokenizer = load_tokenizer(args.model, max(lengths))
        return length_problems(lengths, str(resolve_path(args.data)), tokenizer, truncation, **masking)
    except (OSError, ValueError) as e:
        return [f"--model_max_length: cannot check the lengths against {args.data} ({e})"]


def finished_rows(args, configs: list, out: Path) -> tuple[dict, dict]:
    """The rows of ``configs`` finished earlier in ``out`` (read only) and the settings they
    must share with this sweep. Checked up front: a sweep folder of another benchmark is
    refused before anything trains, so its table never mixes two benchmarks."""
    earlier, shared = {}, shared_settings(args)
    for cfg in configs:
        for name, _ in run_names(cfg, sweep_seeds(args.seeds)):
            result = out / "runs" / name / "result.json"
            if result.exists():
                earlier[name] = json.loads(result.read_text())
                check_reusable(earlier[name], shared, result)
    try:
        one_benchmark([(str(out / "runs" / n / "result.json"), r) for n, r in earlier.items()], args.benchmark)
    except ResultError as e:
        raise SystemExit(f"[sweep] error: {e}; use another --out for --benchmark {args.benchmark}") from None
    return earlier, shared


def _sweep(args, grid: dict, swept: list, configs: list, out: Path, earlier: dict, shared: dict) -> None:
    """The sweep itself, inside its folder's lock: score the base model, train and score each
    run not in ``earlier`` (a failure is recorded and the sweep goes on), then write the
    tables; exits 1 at the end when a run failed."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        base_dir, base = base_run(args, out, shared)
    except (SweepError, ResultError) as e:  # the runs are still worth making; they are compared with each other
        base_dir = base = None
        tqdm.write(f"[sweep] warning: the base model was not scored ({one_line_error(e)}); "
                   f"no comparison with the base in the table")
    rows, done, failed, t0 = [], 0, [], time.time()
    runs = [(cfg, name, seed) for cfg in configs for name, seed in run_names(cfg, sweep_seeds(args.seeds))]
    for cfg, name, seed in tqdm(runs, desc="sweep", unit="run"):
        run_root = out / "runs" / name
        if name in earlier:
            rows.append(earlier[name])
            tqdm.write(f"[sweep] {name}: finished earlier, skipped")
            continue
        try:
            row = run_config(cfg, args, run_root, shared, seed)
            (run_root / "failed.json").unlink(missing_ok=True)
        except (SweepError, ResultError) as e:  # recorded; the other configurations still run
            row = {"name": name, "config": config_name(cfg), "seed": seed, **cfg, "benchmark": args.benchmark,
                   "status": "failed", "error": one_line_error(e) if isinstance(e, SweepError) else str(e)}
            (run_root / "failed.json").write_text(json.dumps(row, indent=1) + "\n")
            failed.append(row)
            tqdm.write(f"[sweep] {name}: FAILED ({row['error']}); log {run_root / 'run.log'}; going on")
        else:
            done += 1
            tqdm.write(f"[sweep] {name}: loss {row['final_train_loss']} {args.metric} {row[args.metric]:.4f} "
                       f"({row['wall_seconds']:.0f}s)")
        rows.append(row)
        tables(rows, out, args, base_dir, base)  # keep the table current while the sweep runs
    best = tables(rows, out, args, base_dir, base)
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    png = plot(ok, swept, args.metric, out, BENCHMARKS[args.benchmark]) if ok else None
    print(f"sweep ({BENCHMARKS[args.benchmark]}): {len(rows)} configs ({done} run now, "
          f"{len(rows) - done - len(failed)} skipped, {len(failed)} failed) in {time.time() - t0:.0f}s; "
          + (f"best {args.metric} {best[args.metric]:.4f} ({best['name']}); " if best else "")
          + f"tables {out}/results.md, {out}/results.csv" + (f"; plot {png}" if png else ""))
    if failed:
        raise SystemExit(f"[sweep] error: {len(failed)} of {len(rows)} runs failed: "
                         + "; ".join(f"{r['name']}: {r['error']}" for r in failed)
                         + f" (recorded in {out}/results.md; a rerun tries them again)")


def tables(rows: list[dict], out: Path, args, base_dir: Optional[Path], base: Optional[dict]) -> Optional[dict]:
    """Annotate ``rows`` with intervals and paired tests and write results.csv / results.md;
    returns the best run."""
    best = annotate(rows, lambda r: out / "runs" / r["name"] / args.benchmark, base_dir, args.metric)
    write_tables(rows, out, list(AXES), args.metric, best, base)
    return best


if __name__ == "__main__":
    main()
