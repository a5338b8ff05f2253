"""Draw a run's training curve: loss per logged step, learning rate on a second axis.

    python scripts/plot_loss.py ckpt/HW2                 # writes ckpt/HW2/loss_curve.png
    python scripts/plot_loss.py ckpt/HW2 --out curve.png

RUN_DIR is a training output folder (or one of its checkpoint-N folders): the points
come from its ``trainer_state.json`` (the Trainer's ``log_history``). ``train_hw_parallel.py``
calls :func:`plot_run` at the end of every run.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

PNG_NAME = "loss_curve.png"


def read_curve(run_dir: str | os.PathLike) -> tuple[list[int], list[float], list[float | None]]:
    """(steps, losses, learning rates) of the training-loss entries in the run's
    ``trainer_state.json`` (evaluation and summary entries are skipped)."""
    state = Path(run_dir) / "trainer_state.json"
    if not state.is_file():
        raise FileNotFoundError(f"{state}: no trainer_state.json (is {run_dir} a training output folder?)")
    history = json.loads(state.read_text())["log_history"]
    points = [h for h in history if "loss" in h and "step" in h]
    return [h["step"] for h in points], [h["loss"] for h in points], [h.get("learning_rate") for h in points]


def plot_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """Write the loss/learning-rate figure for ``run_dir``; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    steps, losses, lrs = read_curve(run_dir)
    out = str(out or Path(run_dir) / PNG_NAME)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(steps, losses, color="tab:blue", marker="o" if len(steps) < 30 else None, ms=3, label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("mean token loss", color="tab:blue")
    if any(lr is not None for lr in lrs):
        ax2 = ax.twinx()
        ax2.plot(steps, [lr if lr is not None else float("nan") for lr in lrs], color="tab:orange", lw=1,
                 label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.set_title(Path(run_dir).resolve().name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="training output folder holding trainer_state.json")
    ap.add_argument("--out", help=f"PNG path (default RUN_DIR/{PNG_NAME})")
    args = ap.parse_args(argv)
    steps, losses, _ = read_curve(args.run_dir)
    out = plot_run(args.run_dir, args.out)
    span = f"steps {steps[0]}-{steps[-1]}, loss {losses[0]:.4f} -> {losses[-1]:.4f}" if steps else "no loss logged"
    print(f"wrote {out} ({len(steps)} points, {span})")


if __name__ == "__main__":
    main()
