"""scripts/sweep.py: two tiny configurations train and get scored, the table has two rows
with numbers, and a rerun skips both; a sweep folder of one benchmark is not resumed with
another (result.json rows written by hand, nothing trains)."""
import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script, script_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer):
    """A randomly initialised 2-layer Llama with the real SmolLM2 tokenizer, head_dim 64
    (which vLLM's CPU attention also takes, should the sweep's IFEval step run on vLLM)."""
    from test_train_hw_parallel import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama", tokenizer, heads=1, kv_heads=1)


def _sweep(out, model):
    cmd = [sys.executable, "scripts/sweep.py", "--model", str(model), "--lr", "1e-3,3e-3", "--max_steps", "2",
           "--total_bsz", "2", "--bsz_per_dev", "1", "--model_max_length", "128", "--prompts", "2",
           "--max_tokens", "8", "--out", str(out)]
    # sweep.py runs bash scripts (sft.sh, ifeval/run.sh): they get this interpreter. Generation
    # through transformers: vLLM runs the same CLI in tests/generation/test_vllm_engine.py.
    # One training rank: what is checked is the sweep; ZeRO-2 over two ranks is tests/scripts/test_sft_sh.py's.
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=script_env(IFEVAL_BACKEND="hf", CPU_RANKS="1"))
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout + r.stderr


@pytest.mark.slow
def test_two_configs_then_rerun_skips(tmp_path, tiny_model):
    out = tmp_path / "sweep"
    log = _sweep(out, tiny_model)
    assert "2 configs (2 run now, 0 skipped)" in log
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 2
    assert sorted(float(r["lr"]) for r in rows) == [1e-3, 3e-3]
    for r in rows:
        assert r["benchmark"] == "ifeval"
        assert float(r["final_train_loss"]) > 0
        for m in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
            assert 0.0 <= float(r[m]) <= 1.0
        assert float(r["wall_seconds"]) > 0
    md = (out / "results.md").read_text().strip().splitlines()
    assert len(md) == 4  # header, rule, two rows
    assert (out / "sweep_prompt_level_strict_acc.png").read_bytes()[:4] == b"\x89PNG"

    results = sorted(out.glob("runs/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    log2 = _sweep(out, tiny_model)
    assert "2 configs (0 run now, 2 skipped)" in log2
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2


GRID = ["--lr", "1e-3,3e-3", "--max_steps", "2", "--total_bsz", "2", "--bsz_per_dev", "1", "--model_max_length", "128"]


def finished_sweep(out, benchmarks):
    """OUT/runs/NAME/result.json for both points of GRID, as a finished sweep leaves them;
    a benchmark of None leaves the field out (rows written before IFBench)."""
    sweep = load_script("scripts/sweep.py")
    for lr, bench, acc in zip((1e-3, 3e-3), benchmarks, (0.25, 0.5)):
        cfg = {"lr": lr, "epochs": 1.0, "warmup_ratio": 0.1, "scheduler": "cosine", "total_bsz": 2,
               "model_max_length": 128}
        row = {"name": sweep.config_name(cfg), **cfg, "final_train_loss": 1.5, "prompt_level_strict_acc": acc,
               "inst_level_strict_acc": acc, "prompt_level_loose_acc": acc, "inst_level_loose_acc": acc,
               "num_prompts": 4, "wall_seconds": 9.0}
        if bench:
            row["benchmark"] = bench
        (out / "runs" / row["name"]).mkdir(parents=True)
        (out / "runs" / row["name"] / "result.json").write_text(json.dumps(row))


def test_finished_ifbench_sweep_is_tabled(tmp_path, capsys):
    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sw"
    finished_sweep(out, ["ifbench", "ifbench"])
    sweep.main([*GRID, "--benchmark", "ifbench", "--out", str(out)])
    assert "sweep (IFBench): 2 configs (0 run now, 2 skipped)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["benchmark"], r["prompt_level_strict_acc"]) for r in rows] == [("ifbench", "0.25"), ("ifbench", "0.5")]
    assert (out / "sweep_prompt_level_strict_acc.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(out.glob("runs/*/ckpt"))  # nothing trained


@pytest.mark.parametrize("earlier, asked, listed", [
    ([None, None], "ifbench", r"expected IFBench only\): \S+/result.json: IFEval; \S+/result.json: IFEval"),
    (["ifeval", "ifbench"], "ifeval", r"expected IFEval only\): \S+/result.json: IFEval; \S+/result.json: IFBench"),
])
def test_other_benchmark_in_the_sweep_folder_is_refused(tmp_path, earlier, asked, listed):
    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sw"
    finished_sweep(out, earlier)
    with pytest.raises(SystemExit, match=r"different benchmarks cannot be compared \(" + listed +
                       f"; use another --out for --benchmark {asked}"):
        sweep.main([*GRID, "--benchmark", asked, "--out", str(out)])
    assert not (out / "results.csv").exists() and not list(out.glob("runs/*/run.log"))


def test_grid_parsing_and_names():
    sweep = load_script("scripts/sweep.py")
    assert sweep.parse_axis("lr", "1e-5, 2e-5") == [1e-5, 2e-5]
    with pytest.raises(SystemExit, match="--total_bsz"):
        sweep.parse_axis("total_bsz", "eight")
    a = {"lr": 2e-5, "epochs": 3.0, "warmup_ratio": 0.1, "scheduler": "cosine", "total_bsz": 128, "model_max_length": 2048}
    b = dict(a, lr=5e-5)
    assert sweep.config_name(a) != sweep.config_name(b)
    assert sweep.config_name(a) == sweep.config_name(dict(a))
    assert "/" not in sweep.config_name(a)


@pytest.mark.slow
def test_help():
    r = subprocess.run([sys.executable, "scripts/sweep.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "--lr" in r.stdout and "resumable" in r.stdout


def test_rerun_with_other_shared_settings_does_not_reuse_results(tmp_path, capsys):
    """A finished configuration is reused only when the settings its folder name does not
    say (steps, data, model, prompts, ...) are the same; otherwise the rerun stops before
    training anything. Results from before the record are reused with a warning."""
    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sweep"
    argv = ["--lr", "1e-3", "--max_steps", "2", "--total_bsz", "2", "--bsz_per_dev", "1", "--model_max_length", "128",
            "--prompts", "2", "--max_tokens", "8", "--model", "tiny", "--out", str(out)]
    cfg = {"lr": 1e-3, "epochs": 1.0, "warmup_ratio": 0.1, "scheduler": "cosine", "total_bsz": 2, "model_max_length": 128}
    run = out / "runs" / sweep.config_name(cfg)
    run.mkdir(parents=True)
    data = REPO / "data" / "demo_sft.json"
    shared = {"model": "tiny", "data": "data/demo_sft.json", "data_hash": hashlib.sha256(data.read_bytes()).hexdigest(),
              "bsz_per_dev": 1, "max_steps": 2, "prompt_set": "ifeval/data/sampled_input_data.jsonl", "prompts": 2,
              "max_tokens": 8, "train_args": []}
    row = {"name": run.name, **cfg, "final_train_loss": 1.0, "num_prompts": 2, "wall_seconds": 1.0,
           **{m: 0.5 for m in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                               "inst_level_loose_acc")}}
    (run / "result.json").write_text(json.dumps({**row, "shared_settings": shared}))
    sweep.main(argv)  # same settings: reused
    assert "1 configs (0 run now, 1 skipped)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        sweep.main(argv[:2] + ["--max_steps", "4"] + argv[4:])
    assert "  max_steps: 2 -> 4" in str(err.value) and "another --out" in str(err.value)
    assert not (run / "ckpt").exists()  # nothing was trained
    (run / "result.json").write_text(json.dumps(row))  # made before the record existed
    sweep.main(argv)
    assert "does not record the settings" in capsys.readouterr().out


@pytest.mark.slow
def test_second_sweep_in_a_folder_is_refused(tmp_path):
    """While a sweep holds OUT, a second sweep into it stops at once (nothing trains),
    naming the first."""
    from smolsft.lock import folder_lock

    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sweep"
    with folder_lock(out, "sweep"):
        with pytest.raises(SystemExit, match=rf"^\[sweep\] error: sweep {out} is in use by pid "):
            sweep.main([*GRID, "--out", str(out)])
    assert not (out / "runs").exists()
