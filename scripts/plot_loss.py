"""Draw a run's training curve: loss per logged step, learning rate on a second axis.

    python scripts/plot_loss.py ckpt/HW2                 # writes ckpt/HW2/loss_curve.png
    python scripts/plot_loss.py ckpt/HW2 --out curve.png

RUN_DIR is a training output folder (or one of its checkpoint-N folders): the points
come from its ``trainer_state.json`` (the Trainer's ``log_history``). The work is done by
``smolsft/report/reports.py`` (``read_curve``, ``plot_loss_curve``), which ``train_hw_parallel.py`` also
calls at the end of every run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smolsft.report.reports import LOSS_CURVE_PNG, plot_loss_curve, read_curve


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="training output folder holding trainer_state.json")
    ap.add_argument("--out", help=f"PNG path (default RUN_DIR/{LOSS_CURVE_PNG})")
    args = ap.parse_args(argv)
    steps, losses, _ = read_curve(args.run_dir)
    out = plot_loss_curve(args.run_dir, args.out)
    span = f"steps {steps[0]}-{steps[-1]}, loss {losses[0]:.4f} -> {losses[-1]:.4f}" if steps else "no loss logged"
    print(f"wrote {out} ({len(steps)} points, {span})")


if __name__ == "__main__":
    main()
