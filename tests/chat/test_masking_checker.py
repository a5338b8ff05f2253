"""smolsft/chat/masking_checker.py, the golden-file checker behind ``python conversation_func.py`` and
``python reverse_conversation_func.py``: passes on the official files, names the first
mismatch and a bad sample, and the check scripts work from any directory."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import script_env

from conversation_func import conversation_to_features
from smolsft.chat.masking_checker import run_checker
from reverse_conversation_func import reverse_conversation_to_features
from test_conversation_func import load_golden

REPO = Path(__file__).resolve().parents[2]


def test_checker_passes_on_official_files(course_ref, capsys):
    args = ["--samples", str(course_ref / "exercise_samples.json"), "--golden", str(course_ref / "exercise_solutions.json")]
    assert run_checker(conversation_to_features, "t", "exercise_solutions.json", args + ["--multi_turn"]) == 0
    assert "multi_turn: 5/5 samples match" in capsys.readouterr().out


def test_checker_reports_first_mismatch(tmp_path, capsys):
    golden = load_golden(REPO / "exercise_solutions.json")
    entry = golden["single_turn"][1]
    pos = entry["features"]["labels"].index(next(x for x in entry["features"]["labels"] if x != -100))
    entry["features"]["labels"][pos] = -100  # one trained token wrongly masked in the "golden" file
    bad = tmp_path / "golden.json"
    bad.write_text(json.dumps(golden))
    assert run_checker(conversation_to_features, "t", "exercise_solutions.json", ["--golden", str(bad), "--show", "1"]) == 1
    out = capsys.readouterr().out
    assert f"id {entry['id']}: MISMATCH" in out
    assert f"field labels differs first at position {pos}" in out
    assert "[[" in out and "]]" in out  # --show marks trained tokens
    assert "1 mismatches" in out


def test_checker_names_a_bad_sample(tmp_path, capsys):
    samples = json.loads((REPO / "exercise_samples.json").read_text(encoding="utf-8"))
    samples["single_turn"][2]["messages"][0]["content"] = None
    bad = tmp_path / "samples.json"
    bad.write_text(json.dumps(samples))
    assert run_checker(conversation_to_features, "t", "exercise_solutions.json", ["--samples", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"id {samples['single_turn'][2]['id']}: ERROR" in out and "content must be a string" in out


def test_help_exits_zero():
    with pytest.raises(SystemExit) as e:
        run_checker(conversation_to_features, "t", "exercise_solutions.json", ["--help"])
    assert e.value.code == 0


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_check_scripts_from_another_directory(tmp_path, n):
    """scripts/check_exercises_N.sh run Parts 1-4 on the repo's files from any cwd."""
    r = subprocess.run(["bash", str(REPO / "scripts" / f"check_exercises_{n}.sh")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env=script_env())
    assert r.returncode == 0, r.stdout + r.stderr
    split = "multi_turn" if n in (2, 4) else "single_turn"
    assert f"{split}: 7/7 samples match" in r.stdout


@pytest.mark.slow
def test_cli_fails_on_a_wrong_golden_file(tmp_path):
    """The forward CLI run against the reverse golden file must fail (exit 1)."""
    r = subprocess.run([sys.executable, str(REPO / "conversation_func.py"), "--golden",
                        str(REPO / "reverse_exercise_solutions.json")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "MISMATCH" in r.stdout


def test_checker_passes_on_official_reverse_files(course_ref, capsys):
    args = ["--samples", str(course_ref / "exercise_samples.json"),
            "--golden", str(course_ref / "reverse_exercise_solutions.json")]
    assert run_checker(reverse_conversation_to_features, "t", "reverse_exercise_solutions.json", args) == 0
    assert run_checker(reverse_conversation_to_features, "t", "reverse_exercise_solutions.json", args + ["--multi_turn"]) == 0
    out = capsys.readouterr().out
    assert "single_turn: 5/5 samples match" in out and "multi_turn: 5/5 samples match" in out
