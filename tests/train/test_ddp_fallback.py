"""Training without DeepSpeed (issue 20, point 3): ``torchrun`` + DDP on two gloo ranks
gives the same per-step loss as DeepSpeed ZeRO-2 on two ranks, over the first steps of
the demo's data (data/demo_sft.json), and that path never imports deepspeed.

Both runs use scripts/sft.sh's training arguments (cosine schedule, warmup 0.1, length-
grouped sampling, logging every step), the demo's 8 samples per optimizer step split as
2 ranks x 2 samples x gradient accumulation 2 (so the token count is summed over
micro-batches and ranks), a short MAXLEN of 256 and a tiny 2-layer Llama with SmolLM2's
vocabulary. The learning rate is raised from the demo's 5e-5 to 1e-3 so that each
step's update moves the next step's loss well past the tolerance: a run that updated
differently would not agree.

The DDP run has a ``deepspeed`` package first on its PYTHONPATH that raises ImportError,
with package metadata, as a release that fails to import (0.18.4 on a GPU without a CUDA
toolkit) looks to transformers and accelerate; it records any import attempt in a file.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from test_train_hw_parallel import _free_port, logged_losses, tiny_llama
from smolsft.files import REPO_ROOT

pytestmark = pytest.mark.slow  # two training launches

STEPS = 4
ATOL = 1e-5  # weights after the run; Adam moves each by up to ~lr = 1e-3 per step
TRAIN_ARGS = [  # scripts/sft.sh's arguments, except the run's size and the learning rate
    "--data_path", str(REPO_ROOT / "data" / "demo_sft.json"), "--model_max_length", "256", "--max_rounds", "5",
    "--max_steps", str(STEPS), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
    "--learning_rate", "1e-3", "--warmup_steps", "0.1", "--lr_scheduler_type", "cosine", "--weight_decay", "0.0",
    "--train_sampling_strategy", "group_by_length", "--logging_steps", "1", "--save_strategy", "no",
    "--dataloader_num_workers", "0", "--dataloader_pin_memory", "False", "--report_to", "none", "--seed", "42",
    "--precision", "fp32",  # the exactness reference: both paths in fp32
]

BROKEN_DEEPSPEED = '''import os
with open(os.environ["DEEPSPEED_IMPORT_LOG"], "a") as f:
    import traceback
    f.write("".join(traceback.format_stack()) + "\\n")
raise ImportError("deepspeed is broken on purpose (tests/train/test_ddp_fallback.py)")
'''


def broken_deepspeed(root: Path) -> Path:
    """A folder holding a ``deepspeed`` package that cannot be imported, with metadata."""
    (root / "deepspeed").mkdir(parents=True)
    (root / "deepspeed" / "__init__.py").write_text(BROKEN_DEEPSPEED)
    dist = root / "deepspeed-0.18.4.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.18.4\n")
    return root


def test_ddp_without_deepspeed_matches_deepspeed_zero2(tmp_path, tokenizer):
    pytest.importorskip("deepspeed")  # the reference path needs the real package
    model = tiny_llama(tmp_path / "tiny", tokenizer)
    script = str(REPO_ROOT / "train_hw_parallel.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    fake = broken_deepspeed(tmp_path / "no_deepspeed")
    import_log = tmp_path / "deepspeed_imports.txt"
    ddp_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(fake), env.get("PYTHONPATH")])),
               "DEEPSPEED_IMPORT_LOG": str(import_log)}
    runs = {
        "ddp": ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_port", str(_free_port()), script], ddp_env),
        "deepspeed": ([sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2",
                       "--master_port", str(_free_port()), script,
                       "--deepspeed", str(REPO_ROOT / "ds_configs" / "zero2_no_offload.json")], env),
    }
    procs = {}
    for name, (launch, run_env) in runs.items():  # both at once: 4 single-thread processes
        argv = launch + ["--model_name_or_path", str(model), "--output_dir", str(tmp_path / name),
                         "--data_cache_dir", str(tmp_path / f"cache_{name}"), *TRAIN_ARGS]
        procs[name] = subprocess.Popen(argv, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
    logs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, f"{name}:\n{logs[name][-4000:]}"
    assert not import_log.exists(), f"the DDP run imported deepspeed:\n{import_log.read_text()[-3000:]}"

    ddp, ds = logged_losses(tmp_path / "ddp"), logged_losses(tmp_path / "deepspeed")
    print("per-step loss (DDP, DeepSpeed ZeRO-2):", list(zip(ddp, ds)))
    assert len(ddp) == len(ds) == STEPS
    for step, (a, b) in enumerate(zip(ddp, ds), 1):
        assert abs(a - b) <= 1e-4, f"step {step}: DDP {a} vs DeepSpeed {b}"
    manifests = {n: json.loads((tmp_path / n / "run_manifest.json").read_text()) for n in runs}
    assert manifests["ddp"]["world_size"] == manifests["deepspeed"]["world_size"] == 2
    assert manifests["ddp"]["training_args"]["deepspeed"] is None
    # The same weights after the last step, and the steps moved them far beyond that tolerance.
    init = load_file(str(model / "model.safetensors"))
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("ddp", "deepspeed"))
    for state in (a, b, init):  # the tied output layer is stored by some save paths only (DeepSpeed's)
        head = state.pop("lm_head.weight", None)
        assert head is None or torch.equal(head, state["model.embed_tokens.weight"])
    assert a.keys() == b.keys() == init.keys(), set(a) ^ set(b) ^ set(init)
    moved = max(float((a[n] - init[n]).abs().max()) for n in a)
    print(f"largest weight change {moved:.2e}; largest DDP-DeepSpeed weight difference "
          f"{max(float((a[n] - b[n]).abs().max()) for n in a):.2e}")
    assert moved > 100 * ATOL
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=ATOL, msg=lambda m: f"{name}: {m}")
