"""scripts/gpu_bundle.py and scripts/gpu_check.sh --bundle (issue 20, point 6), on the CPU.

The lent GPU machine has torch, transformers, accelerate, matplotlib and pytest (with their
dependencies) and nothing else. It is simulated here by an interpreter that sees only those:
a venv without site packages whose one ``.pth`` line points at a folder of links to those
distributions (the dependency closure of the five, as installed in this environment) and
pip. The bundle is built for this interpreter's CPython version (the real one is built for
3.12), so that its binary wheels install here.

Building the bundle needs PyPI; without it the tests that need a bundle are skipped and say so.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

from smolsft.files import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_bundle.py"
GPU_MACHINE_PACKAGES = ("torch", "transformers", "accelerate", "matplotlib", "pytest", "pip")
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _closure(roots) -> set[str]:
    from packaging.requirements import Requirement

    seen, todo = {}, list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[name] = dist
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.fixture(scope="session")
def gpu_machine_python(tmp_path_factory) -> Path:
    """The ``bin`` folder of an interpreter that has only the lent machine's packages."""
    root = tmp_path_factory.mktemp("gpu_machine")
    site = root / "site"
    site.mkdir()
    for dist in _closure(GPU_MACHINE_PACKAGES).values():
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    purelib = subprocess.run([str(root / "venv" / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "gpu_machine.pth").write_text(f"{site}\n")
    probe = subprocess.run([str(root / "venv" / "bin" / "python"), "-c",
                            "import torch, transformers, accelerate, pip\n"
                            "for m in ('deepspeed', 'lm_eval', 'nltk', 'langdetect', 'immutabledict', 'datasets'):\n"
                            "    try:\n        __import__(m); print('HAS', m)\n    except ImportError: pass"],
                           capture_output=True, text=True)
    assert probe.returncode == 0 and "HAS" not in probe.stdout, probe.stdout + probe.stderr
    return root / "venv" / "bin"


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("bundle") / "b"
    r = subprocess.run([sys.executable, str(SCRIPT), "make", str(dest), "--python_version", PY_VERSION],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0 and "pip failed" in r.stderr:
        pytest.skip(f"cannot build the bundle (PyPI unreachable?): {r.stderr.strip()[-300:]}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"\[gpu_bundle\] .*: 14 wheels .* \d+\.\d MiB \(limit 64 MiB\)", r.stdout), r.stdout
    return dest


@pytest.mark.slow
def test_bundle_is_small_and_complete(bundle):
    man = json.loads((bundle / "MANIFEST.json").read_text())
    files = [p for p in bundle.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 64 * 2**20
    assert {str(p.relative_to(bundle)) for p in files} == set(man["files"]) | {"MANIFEST.json"}
    names = {re.sub(r"[-_.]+", "-", w["name"]).lower() for w in man["wheels"].values()}
    assert {"lm-eval", "nltk", "langdetect", "immutabledict", "deepspeed"} <= names
    assert not {"datasets", "pandas", "pyarrow", "torch"} & names
    assert (bundle / "tokenizer" / "tokenizer.json").read_bytes() == (REPO_ROOT / "SmolLM2-135M" / "tokenizer.json").read_bytes()
    assert not list(bundle.rglob("*.safetensors"))  # the weights stay behind
    assert (bundle / "nltk_data" / "tokenizers" / "punkt_tab" / "english").is_dir()
    assert (bundle / "ifeval_data" / "sampled_input_data.jsonl").is_file()


IMPORT_CHECK = r"""
import json, sys
target = sys.argv[1]
import ifeval.scoring as scoring  # the product's path to lm_eval's IFEval checkers
import deepspeed, langdetect, lm_eval, nltk
from lm_eval.tasks.ifeval import instructions_registry
files = {m.__name__: m.__file__ for m in (deepspeed, langdetect, lm_eval, nltk, instructions_registry)}
checker = instructions_registry.INSTRUCTION_DICT["punctuation:no_comma"]("x")
print(json.dumps({"files": files, "sentences": nltk.sent_tokenize("One here. Two there."),
                  "no_comma": [checker.check_following("a b"), checker.check_following("a, b")],
                  "datasets_imported": "datasets" in sys.modules, "ids": len(scoring.INSTRUCTION_IDS)}))
"""


@pytest.mark.slow
def test_wheels_install_into_fresh_target_and_import(bundle, gpu_machine_python, tmp_path):
    target = tmp_path / "target"
    wheels = sorted(str(p) for p in (bundle / "wheels").glob("*.whl"))
    r = subprocess.run([str(gpu_machine_python / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
                        "--target", str(target), *wheels], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    env = {"PATH": f"{gpu_machine_python}:/usr/bin:/bin", "PYTHONPATH": f"{target}:{REPO_ROOT}",
           "NLTK_DATA": str(bundle / "nltk_data"), "HOME": str(tmp_path), "DS_ACCELERATOR": "cpu"}
    r = subprocess.run([str(gpu_machine_python / "python"), "-c", IMPORT_CHECK, str(target)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for name, path in res["files"].items():
        assert path.startswith(str(target)), (name, path)
    assert res["sentences"] == ["One here.", "Two there."]
    assert res["no_comma"] == [True, False]
    assert not res["datasets_imported"] and res["ids"] > 20


@pytest.mark.slow
def test_install_checks_and_skips(bundle, gpu_machine_python, tmp_path):
    """gpu_bundle.py install: installs what the machine lacks; a damaged wheel is refused by name."""
    target = tmp_path / "t"
    r = subprocess.run([str(gpu_machine_python / "python"), str(SCRIPT), "install", str(bundle), str(target)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    installed = re.search(r"installed (\d+) wheels into \S+: (.*)", r.stdout)
    assert installed and {"deepspeed", "lm_eval", "nltk", "langdetect", "immutabledict"} <= set(
        installed.group(2).split(", ")), r.stdout
    assert (target / "lm_eval").is_dir() and (target / "deepspeed").is_dir()
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(bundle), str(broken)], check=True)
    whl = next((broken / "wheels").glob("nltk-*.whl"))
    whl.write_bytes(whl.read_bytes()[:-10])
    r = subprocess.run([str(gpu_machine_python / "python"), str(SCRIPT), "install", str(broken), str(tmp_path / "t2")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and f"[gpu_bundle] error: {whl}: sha256 differs" in r.stderr, r.stderr
    assert not (tmp_path / "t2").exists()


def test_make_refuses_existing_or_tracked_folder(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "make", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 1 and f"[gpu_bundle] error: {tmp_path} exists" in r.stderr
    r = subprocess.run([sys.executable, str(SCRIPT), "make", str(REPO_ROOT / "docs_bundle_not_ignored")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "docs_bundle_not_ignored/ is not ignored by git" in r.stderr, r.stderr
    assert not (REPO_ROOT / "docs_bundle_not_ignored").exists()


@pytest.mark.slow
def test_gpu_check_bundle_plumbing_on_cpu(bundle, gpu_machine_python, tmp_path):
    """--bundle --allow_cpu end to end on the simulated machine: install, model, 2 training
    steps (torchrun), the loss benchmark, 2 IFEval prompts, and the summary block."""
    out = tmp_path / "out"
    env = {"PATH": f"{gpu_machine_python}:/usr/bin:/bin", "HOME": str(tmp_path), "GPU_CHECK_OUT": str(out),
           "GPU_CHECK_STEPS": "2", "GPU_CHECK_ENGINE": "torchrun", "TMPDIR": str(tmp_path),
           "GPU_CHECK_LIMIT_SCALE": "20"}  # a loaded CPU test machine: the limits are for the GPU
    r = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--bundle", str(bundle), "--allow_cpu"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = r.stdout[r.stdout.index("==== gpu_check --bundle summary"):]
    assert re.search(r"installed \d+ wheels into .*lm_eval", (out / "install.log").read_text())
    assert "engine         torchrun (GPU_CHECK_ENGINE=torchrun)" in summary
    assert re.search(r"training       2 steps, (fp32|bf16), loss \d+\.\d{4} -> \d+\.\d{4}", summary), summary
    assert re.search(r"loss 1x64 .* fused/logits time \d", summary), summary
    assert "IFEval         2 prompts x 8 tokens" in summary and "metrics        prompt strict" in summary
    assert re.search(r"stages         install ok \d+s, model ok \d+s, train ok \d+s, loss_benchmark ok \d+s, "
                     r"ifeval ok \d+s; stages \d+s, wall \d+s", summary), summary
    assert json.loads((out / "ifeval" / "summary.json").read_text())["num_prompts"] == 2
    assert not list(tmp_path.glob("gpu_check_site.*"))  # the temporary target is removed


FAKE_GPU = """import torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: {n}
torch.cuda.get_device_capability = lambda *a: ({major}, {minor})
"""


@pytest.mark.slow
@pytest.mark.parametrize("n,cap,prec,ga", [(1, (9, 0), "--bf16 True", 8), (2, (7, 5), "--fp16 True", 4)])
def test_bundle_dry_run_on_a_simulated_gpu(tmp_path, n, cap, prec, ga):
    """The GPU branch's plan (no bundle needed for a dry run beyond its manifest): torch is made
    to report ``n`` GPUs of capability ``cap``; the engine is DeepSpeed when it imports here,
    else torchrun with deepspeed's own error as the reason; nothing is written."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sitecustomize.py").write_text(FAKE_GPU.format(n=n, major=cap[0], minor=cap[1]))
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "MANIFEST.json").write_text("{}")
    out = tmp_path / "out"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "PYTHONPATH": str(fake), "HOME": str(tmp_path),
           "GPU_CHECK_OUT": str(out), "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--bundle", str(bundle), "--dry_run"],
                       cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    engine = re.search(r"\[gpu_check\] training: (\w+) \((.*)\); (.*)", r.stdout)
    assert engine, r.stdout
    assert engine.group(3) == f"{n} rank(s) x 16 x GA {ga}, MAXLEN 2048, {prec}"
    train = next(x for x in r.stdout.splitlines() if x.startswith("[gpu_check] train (limit 150s)"))
    if engine.group(1) == "deepspeed":
        assert re.fullmatch(r"deepspeed \S+ imports", engine.group(2))
        assert f"deepspeed.launcher.runner --num_gpus {n} " in train and "--deepspeed ds_configs/" in train
    else:
        assert engine.group(1) == "torchrun" and engine.group(2).startswith("deepspeed does not import: ")
        assert f"torch.distributed.run --nproc_per_node {n} " in train and "--deepspeed" not in train
    assert f"--max_steps 20 --per_device_train_batch_size 16 --gradient_accumulation_steps {ga}" in train
    assert train.endswith(prec)
    assert "loss_step.py" in r.stdout and "--shapes 1x2048 4x2048" in r.stdout
    assert "--backend hf --max_tokens 1024 --batch_size 128" in r.stdout
    assert r.stdout.rstrip().endswith("[gpu_check] dry run: nothing was run")
    assert not out.exists() and not list(tmp_path.glob("gpu_check_site.*"))
    forced = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--bundle", str(bundle), "--dry_run"],
                            cwd=REPO_ROOT, env={**env, "GPU_CHECK_ENGINE": "torchrun"}, capture_output=True, text=True,
                            timeout=300)
    assert "[gpu_check] training: torchrun (GPU_CHECK_ENGINE=torchrun)" in forced.stdout, forced.stdout + forced.stderr
