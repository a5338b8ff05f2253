"""scripts/plot_loss.py, the loss-curve CLI over report.read_curve / report.plot_loss_curve."""
import subprocess
import sys

import matplotlib.image
import pytest

from smolsft.report import reports as report
from test_reports import write_state
from smolsft.files import REPO_ROOT

# Every test here runs a shell script or a CLI in a subprocess.
pytestmark = pytest.mark.slow


def test_cli_writes_png(tmp_path):
    run = write_state(tmp_path / "run")
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "plot_loss.py"), str(run)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "3 points" in r.stdout and "2.5000 -> 2.0000" in r.stdout
    img = matplotlib.image.imread(run / report.LOSS_CURVE_PNG)
    assert img.shape[:2] == (480, 840)  # 7 x 4 inches at 120 dpi
    out = tmp_path / "elsewhere.png"
    report.plot_loss_curve(run, out)
    assert out.stat().st_size > 1000


def test_help():
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "plot_loss.py"), "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "RUN_DIR" in r.stdout
