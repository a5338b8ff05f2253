"""scripts/plot_loss.py: the curve comes from trainer_state.json's training-loss entries."""
import json
import subprocess
import sys

import matplotlib.image
import pytest

from utils import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import plot_loss  # noqa: E402

HISTORY = [
    {"step": 1, "loss": 2.5, "learning_rate": 1e-5, "epoch": 0.1},
    {"step": 2, "loss": 2.25, "learning_rate": 2e-5, "epoch": 0.2},
    {"step": 2, "eval_loss": 2.4, "epoch": 0.2},                      # not a training point
    {"step": 3, "loss": 2.0, "learning_rate": 1.5e-5, "epoch": 0.3},
    {"step": 3, "train_runtime": 9.0, "train_loss": 2.25, "epoch": 0.3},  # summary, skipped
]


def write_state(folder, history=HISTORY):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": history}))
    return folder


def test_read_curve_keeps_training_points(tmp_path):
    steps, losses, lrs = plot_loss.read_curve(write_state(tmp_path / "run"))
    assert steps == [1, 2, 3] and losses == [2.5, 2.25, 2.0] and lrs == [1e-5, 2e-5, 1.5e-5]


def test_cli_writes_png(tmp_path):
    run = write_state(tmp_path / "run")
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "plot_loss.py"), str(run)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 points" in r.stdout and "2.5000 -> 2.0000" in r.stdout
    img = matplotlib.image.imread(run / plot_loss.PNG_NAME)
    assert img.shape[:2] == (480, 840)  # 7 x 4 inches at 120 dpi
    out = tmp_path / "elsewhere.png"
    plot_loss.plot_run(run, out)
    assert out.stat().st_size > 1000


def test_missing_state_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        plot_loss.read_curve(tmp_path)
