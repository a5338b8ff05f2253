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
    assert "2 configs (2 run now, 0 skipped, 0 failed)" in log
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
    assert len([ln for ln in md if ln.startswith("| lr")]) == 2  # a row per configuration
    assert any(ln.startswith("Base model ") for ln in md)  # the base model was scored once, beside them
    assert (out / "base" / "ifeval" / "summary.json").is_file()
    assert (out / "sweep_prompt_level_strict_acc.png").read_bytes()[:4] == b"\x89PNG"

    results = sorted(out.glob("runs/*/result.json"))
    stamps = [p.stat().st_mtime_ns for p in results]
    log2 = _sweep(out, tiny_model)
    assert "2 configs (0 run now, 2 skipped, 0 failed)" in log2
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
    sweep.main([*GRID, "--benchmark", "ifbench", "--base", "none", "--out", str(out)])
    assert "sweep (IFBench): 2 configs (0 run now, 2 skipped, 0 failed)" in capsys.readouterr().out
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
            "--prompts", "2", "--max_tokens", "8", "--model", "tiny", "--base", "none", "--out", str(out)]
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
    assert "1 configs (0 run now, 1 skipped, 0 failed)" in capsys.readouterr().out
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


def fake_runs(sweep, monkeypatch, outcomes, calls):
    """sweep.run_config replaced: the run named by ``outcomes[lr]`` either fails (a string:
    its log's last line) or leaves a scored folder with those prompt verdicts, as the real
    one does; ``calls`` collects (run name, seed). The up-front checks that need sft.sh and
    the tokenizer are left out (tests below check them)."""
    from test_compare import hand_run

    def run_config(cfg, args, run_root, shared, seed=None):
        calls.append((run_root.name, seed))
        run_root.mkdir(parents=True, exist_ok=True)
        got = outcomes[(cfg["lr"], seed)] if (cfg["lr"], seed) in outcomes else outcomes[cfg["lr"]]
        if isinstance(got, str):
            raise sweep.SweepError(f"training {run_root.name} failed (exit 1); log {run_root}/run.log:\n"
                                   f"step 0\n{got}\n")
        hand_run(run_root / args.benchmark, got, ["a:x"] * len(got), run_root.name)
        row = {"name": run_root.name, "config": sweep.config_name(cfg), "seed": seed, **cfg, "status": "ok",
               "final_train_loss": 1.0, "benchmark": "ifeval", "num_prompts": len(got), "wall_seconds": 1.0,
               "intervals": json.loads((run_root / "ifeval" / "summary.json").read_text())["intervals"],
               "shared_settings": shared,
               **{m: sum(got) / len(got) for m in ("prompt_level_strict_acc", "inst_level_strict_acc",
                                                   "prompt_level_loose_acc", "inst_level_loose_acc")}}
        (run_root / "result.json").write_text(json.dumps(row))
        return row

    monkeypatch.setattr(sweep, "run_config", run_config)
    monkeypatch.setattr(sweep, "batch_problems", lambda args, totals: [])
    monkeypatch.setattr(sweep, "length_check", lambda args, lengths: [])


def verdicts(fixed, broken, n=100, both=19):
    from test_compare import fixed_broken

    return fixed_broken(fixed, broken, n, both)


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """Issue 40 row 9: the first configuration fails; the second still runs, the table
    records the failure in one line, the sweep exits 1 at the end; a rerun tries the failed
    one again and skips the finished one."""
    from test_compare import hand_run

    sweep = load_script("scripts/sweep.py")
    base_v, better = verdicts(12, 2)
    base = hand_run(tmp_path / "base", base_v, ["a:x"] * 100, "base")
    calls = []
    fake_runs(sweep, monkeypatch, {1e-3: "ValueError: no sample left after truncation", 3e-3: better}, calls)
    out = tmp_path / "sw"
    argv = [*GRID, "--base", str(base), "--out", str(out)]
    with pytest.raises(SystemExit, match=r"1 of 2 runs failed: lr0.001\S*: training lr0.001\S* failed \(exit 1\); "
                                         r"log \S*run.log: ValueError: no sample left"):
        sweep.main(argv)
    assert [c[0].split("_")[0] for c in calls] == ["lr0.001", "lr0.003"]  # the second ran after the failure
    md = (out / "results.md").read_text()
    assert "failed (exit 1); log " in md and "run.log: ValueError: no sample left after truncation |" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| lr0.003"))
    # 12 fixed, 2 broken of 100 against the base: +10.0 points, exact McNemar p = 0.013, marked
    assert "| +10.0 [" in row and "p=0.013 *" in row and row.rstrip().endswith("| best |")
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["failed", "ok"] and float(rows[1]["vs_base_p"]) == pytest.approx(0.01294,
                                                                                                         abs=1e-4)
    assert json.loads((out / "runs" / rows[0]["name"] / "failed.json").read_text())["status"] == "failed"
    calls.clear()
    with pytest.raises(SystemExit, match="1 of 2 runs failed"):
        sweep.main(argv)  # the rerun does not stop at the failed configuration
    assert [c[0].split("_")[0] for c in calls] == ["lr0.001"]


def test_seeds_show_the_training_spread(tmp_path, monkeypatch, capsys):
    from test_compare import hand_run

    sweep = load_script("scripts/sweep.py")
    base_v, _ = verdicts(0, 0)
    base = hand_run(tmp_path / "base", base_v, ["a:x"] * 100, "base")
    calls = []
    outcomes = {(1e-3, 42): verdicts(12, 2)[1], (1e-3, 43): verdicts(2, 0)[1],
                (3e-3, 42): verdicts(0, 0)[1], (3e-3, 43): verdicts(0, 4)[1]}
    fake_runs(sweep, monkeypatch, outcomes, calls)
    out = tmp_path / "sw"
    sweep.main([*GRID, "--seeds", "2", "--base", str(base), "--out", str(out)])
    assert sorted(seed for _, seed in calls) == [42, 42, 43, 43]
    assert all(name.endswith(f"_seed{seed}") for name, seed in calls)
    md = (out / "results.md").read_text()
    assert "across seeds (training noise) beside the evaluation interval" in md
    # lr 1e-3: 0.31 and 0.21 (19 + 12 and 19 + 2 of 100 pass after): mean 0.26, SD (n-1) 0.0707
    sd = ((0.31 - 0.26) ** 2 + (0.21 - 0.26) ** 2) ** 0.5
    name = sweep.config_name({"lr": 1e-3, "epochs": 1.0, "warmup_ratio": 0.1, "scheduler": "cosine", "total_bsz": 2,
                              "model_max_length": 128})
    row = next(ln for ln in md.splitlines() if ln.startswith(f"| {name} | 2 |"))
    assert f"| 0.2600 | {sd:.4f} | 0.2100-0.3100 |" in row
    assert "4 configs (4 run now, 0 skipped, 0 failed)" in capsys.readouterr().out


def test_seed_reaches_the_training_command(tmp_path, monkeypatch):
    sweep = load_script("scripts/sweep.py")
    seen = []

    def run_logged(cmd, env, log, what):
        seen.append(cmd)
        raise sweep.SweepError(f"{what} failed (exit 1); log {log}:\nerror: stop here")

    monkeypatch.setattr(sweep, "run_logged", run_logged)
    cfg = {"lr": 1e-3, "epochs": 1.0, "warmup_ratio": 0.1, "scheduler": "cosine", "total_bsz": 2,
           "model_max_length": 128}
    args = sweep.argparse.Namespace(bsz_per_dev=1, model="m", data="d", max_steps=2, train_args=[])
    with pytest.raises(sweep.SweepError):
        sweep.run_config(cfg, args, tmp_path / "r", {}, seed=43)
    cmd = seen[0]
    assert cmd[:2] == ["bash", "scripts/sft.sh"] and cmd[cmd.index("--seed") + 1] == "43"


@pytest.mark.slow
def test_a_length_no_sample_can_train_at_is_refused_before_training(tmp_path):
    """--model_max_length 8 leaves every sample of data/demo_sft.json without a trained
    token (the chat template's opening alone is longer): refused up front, nothing made."""
    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sw"
    with pytest.raises(SystemExit) as err:
        sweep.main(["--lr", "1e-3", "--max_steps", "2", "--total_bsz", "2", "--bsz_per_dev", "1",
                    "--model_max_length", "8,128", "--base", "none", "--out", str(out)])
    msg = str(err.value)
    assert "bad values, nothing trained" in msg and "--model_max_length 8: no sample of" in msg
    assert "--model_max_length 128" not in msg
    assert not out.exists()


@pytest.mark.slow
def test_sweep_checks_every_value_before_the_first_configuration(tmp_path):
    sweep = load_script("scripts/sweep.py")
    out = tmp_path / "sw"
    argv = ["--total_bsz", "8,6,0", "--lr=2e-5,nan,-1,inf", "--scheduler", "cosine,foo", "--warmup_ratio=-1,0.1,1",
            "--prompts=-3", "--epochs", "0,1", "--max_steps", "0", "--bsz_per_dev", "4", "--out", str(out)]
    with pytest.raises(SystemExit) as err:
        sweep.main(argv)
    msg = str(err.value)
    lines = msg.splitlines()
    assert lines[0] == "[sweep] error: bad values, nothing trained:"
    for shown in ["--lr nan:", "--lr -1.0:", "--lr inf:", "--warmup_ratio -1.0:", "--warmup_ratio 1.0:",
                  "--scheduler 'foo': not a scheduler", "--total_bsz 0: expected an integer >= 1",
                  "--prompts -3:", "--epochs 0.0 with --max_steps 0: trains nothing",
                  "--total_bsz 6: scripts/sft.sh refuses it: TOTALBSZ 6: not a multiple of devices"]:
        assert sum(ln.strip().startswith(shown) for ln in lines) == 1, (shown, msg)
    assert len(lines) == 11 and not out.exists()  # ten bad values, nothing created


@pytest.mark.slow
def test_failed_sweep_configuration_ends_on_one_error_line(tiny_model, tmp_path):
    model = tiny_model
    r = subprocess.run([sys.executable, "scripts/sweep.py", "--model", str(model), "--max_steps", "1", "--total_bsz",
                        "2", "--bsz_per_dev", "1", "--out", str(tmp_path / "sw"), "--base", "none",
                        "--train_args", "--no_such_flag", "1"], cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**script_env(), "OMP_NUM_THREADS": "1", "CPU_RANKS": "1"})
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("[sweep] error: 1 of 1 runs failed: lr5e-05_") and "failed (exit" in last
    assert "run.log" in last and "[train] error: unknown argument(s) --no_such_flag 1" in last  # the run's own line
    assert "Traceback" not in r.stderr and "SweepError" not in r.stdout + r.stderr
