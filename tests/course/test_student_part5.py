"""The course's files belong to the student: a plain Part 5 written the course's way (the two
functions, log-softmax + gather + mask + sum / ``num_items_in_batch``, nothing else) passes
the Part 5 check and trains with every ``--loss``, because the library never reaches into
``loss_functions.py`` (issue 36, point 2)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smolsft.files import REPO_ROOT
from test_train_hw_parallel import _single_rank_env, common_args, write_chats

PLAIN_PART5 = '''
import torch


def cross_entropy_loss(logits, labels, num_items_in_batch=None):
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != -100
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    total = -(picked * mask).sum()
    n = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return total * 0.0 if n == 0 else total / n


def compute_loss_from_logits(outputs, labels, num_items_in_batch=None):
    return cross_entropy_loss(outputs.logits, labels, num_items_in_batch)
'''

# The course's root files a student's checkout holds (what they run), with Part 5 replaced.
COURSE_FILES = ("conversation_func.py", "reverse_conversation_func.py", "loss_functions_checker.py",
                "generate_reference_answers.py", "train_hw_parallel.py", "utils.py", "reference_answers.pkl")


@pytest.fixture(scope="module")
def student_repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("student")
    for name in COURSE_FILES:
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "loss_functions.py").write_text(PLAIN_PART5)
    return root


def test_plain_part5_passes_the_check(student_repo):
    r = subprocess.run([sys.executable, "loss_functions_checker.py"], cwd=student_repo, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "All checks passed!" in r.stdout, r.stdout + r.stderr


def _losses(out: Path) -> list:
    return [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["fused", "logits"])
def test_plain_part5_trains_with_every_loss(student_repo, tiny_llama_dir, tmp_path, loss):
    """The student's checkout and this repository train the same first step to the same loss."""
    data = write_chats(tmp_path / "four.jsonl")
    runs = {}
    for who, script in (("student", student_repo / "train_hw_parallel.py"),
                        ("repository", REPO_ROOT / "train_hw_parallel.py")):
        out = tmp_path / who
        cmd = [sys.executable, str(script), *common_args(tiny_llama_dir, data, out, tmp_path / "cache"),
               "--per_device_train_batch_size", "4", "--loss", loss]
        r = subprocess.run(cmd, env=_single_rank_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
        runs[who] = _losses(out)
    assert runs["student"] and runs["student"] == pytest.approx(runs["repository"], rel=1e-5, abs=1e-6)
