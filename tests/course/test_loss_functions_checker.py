"""Part 5 checker and its reference file: the committed reference_answers.pkl is what the
generator writes, its worked example equals a hand computation, the checker passes on
the project's loss and fails (exit 1, naming the case or the file) on a wrong reference,
a wrong loss, a missing/garbage file, or a pickle that tries to load a class."""
from __future__ import annotations

import math
import pickle
import subprocess
import sys

import pytest
import torch

import loss_functions
import loss_functions_checker as checker
from conftest import REPO, script_env
from generate_reference_answers import FORMAT_VERSION, write_reference

PKL = REPO / "reference_answers.pkl"


def run(*args, timeout=300):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)


def run_main(capsys, *args):
    """The checker's ``main`` in this process (the error paths; one CLI test runs the
    script itself): ``(exit code, stdout, stderr)``."""
    rc = checker.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def cases():
    return checker.load_reference(PKL)


@pytest.mark.slow
def test_committed_reference_is_what_the_generator_writes(tmp_path, cases):
    out = tmp_path / "fresh.pkl"
    res = run(REPO / "generate_reference_answers.py", "--out", out)
    assert res.returncode == 0, res.stderr
    assert f"wrote {len(cases)} cases" in res.stdout
    assert checker.load_reference(out) == cases


def test_reference_covers_the_required_kinds(cases):
    by_name = {c["name"]: c for c in cases}
    assert by_name["worked_example"]["n_valid"] == 4 and by_name["worked_example"]["num_items_in_batch"] == 4
    assert any(c["dtype"] == "bfloat16" for c in cases)
    assert any(c["n_valid"] == 0 and c["loss"] == 0.0 for c in cases)  # all ignored
    assert any(c["shape"][2] >= 49152 for c in cases)  # long vocabulary
    assert any(c["num_items_in_batch"] is None for c in cases)
    several = by_name["several_sequences"]
    ignored_rows = [row for row in several["labels"] if -100 in row]
    assert several["shape"][0] >= 3 and len(ignored_rows) >= 3


def test_worked_example_reference_equals_hand_computation(cases):
    """Independent of both the generator and the loss: math on the issue's logits."""
    torch.manual_seed(0)
    rows = torch.randn(2, 3, 5).tolist()
    want = sum(math.log(sum(math.exp(v) for v in rows[b][t])) - rows[b][t][y]
               for b, t, y in [(0, 0, 2), (0, 1, 4), (1, 0, 3), (1, 1, 0)]) / 4
    case = next(c for c in cases if c["name"] == "worked_example")
    assert case["loss"] == pytest.approx(want, rel=1e-12)


@pytest.mark.slow
def test_checker_cli_passes():
    res = run(REPO / "loss_functions_checker.py")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "All checks passed!"
    assert sum(line.startswith("[PASS]") for line in lines) == len(checker.load_reference(PKL))
    assert "[FAIL]" not in res.stdout


@pytest.mark.slow
def test_check_exercises_5_script_runs_checker_from_elsewhere(tmp_path):
    res = subprocess.run(["bash", str(REPO / "scripts" / "check_exercises_5.sh"), "--no_grad"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env=script_env())
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().endswith("All checks passed!")


@pytest.mark.parametrize("field,delta", [("loss", 1e-4), ("grad", 1e-3)])
def test_checker_fails_on_a_corrupted_reference(tmp_path, capsys, cases, field, delta):
    bad = [dict(c) for c in cases]
    target = next(c for c in bad if c["name"] == "several_sequences")
    if field == "loss":
        target["loss"] = target["loss"] + delta
    else:
        grad = list(target["grad"])
        i = max(range(len(grad)), key=lambda k: abs(grad[k]))
        grad[i] += delta
        target["grad"] = grad
    path = tmp_path / "bad.pkl"
    write_reference(path, bad)
    rc, out, _ = run_main(capsys, "--reference", path)
    assert rc == 1, out
    fails = [line for line in out.splitlines() if line.startswith("[FAIL]")]
    assert len(fails) == 1 and "several_sequences" in fails[0]
    assert "All checks passed!" not in out


def test_checker_fails_a_wrong_loss(monkeypatch, cases):
    """A loss that divides by every position instead of the valid targets is caught."""
    def mean_over_all_positions(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits
        n = labels.shape[0] * (labels.shape[1] - 1)
        return loss_functions.cross_entropy_loss(logits, labels, n)

    monkeypatch.setattr(loss_functions, "compute_loss_from_logits", mean_over_all_positions)
    results = {c["name"]: checker.check_case(c)[0] for c in cases}
    assert not results["worked_example_ignored"] and not results["several_sequences"]
    assert results["all_ignored"]  # zero stays zero whatever the divisor


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "wrong_layout"])
def test_checker_names_an_unusable_file(tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.pkl"
    if kind == "garbage":
        path.write_bytes(b"not a pickle at all")
    elif kind == "truncated":
        path.write_bytes(PKL.read_bytes()[:1000])
    elif kind == "wrong_layout":
        path.write_bytes(pickle.dumps([1, 2, 3]))
    rc, _, err = run_main(capsys, "--reference", path)
    assert rc == 1
    assert str(path) in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("shape", [[2, 3], [2, 3, 5, 1], "2x3x5", None, [2, 3.0, 5], [2, True, 5], [-2, -3, 5]])
def test_checker_names_a_case_with_a_malformed_shape(tmp_path, capsys, cases, shape):
    bad = [dict(c) for c in cases]
    target = next(c for c in bad if c["name"] == "worked_example")
    target["shape"] = shape
    path = tmp_path / "bad_shape.pkl"
    write_reference(path, bad)
    rc, _, err = run_main(capsys, "--reference", path)
    assert rc == 1
    assert str(path) in err and "worked_example" in err and "shape" in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


class _Touch:
    """Unpickling this would create a file: the checker must refuse before that."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_checker_refuses_classes_and_runs_no_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format_version": FORMAT_VERSION, "cases": [_Touch(marker)]}))
    rc, _, err = run_main(capsys, "--reference", path)
    assert rc == 1
    assert "refusing to load" in err and str(path) in err
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["loss_functions_checker.py", "generate_reference_answers.py",
                                    "benchmarks/loss.py"])
def test_help(script):
    res = run(REPO / script, "--help")
    assert res.returncode == 0 and "usage:" in res.stdout
