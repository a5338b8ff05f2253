"""smolsft/train/settings.py: every bad value of the training settings listed at once, before
anything starts (issue 23 row 7), from the function and through sft.sh's dry run."""
import pytest

from smolsft.train.settings import SettingsError, check_settings, sft_sh_problems


def test_settings_checks_list_every_bad_value():
    problems = sft_sh_problems(["TOTALBSZ=0", "BSZPERDEV=4", "NDEV=2", "LR=nan", "EPOCHS=0", "WARMUP=-1",
                                "MAXLEN=512", "MAXROUNDS=5", "SAVESTEPS=200"], ["--max_steps", "0"])
    assert problems == ["TOTALBSZ '0': expected an integer >= 1", "LR 'nan': expected a finite number >= 0",
                        "WARMUP '-1': expected a share in [0, 1) or a whole number of steps",
                        "EPOCHS 0 with --max_steps 0: trains nothing"]
    assert sft_sh_problems(["TOTALBSZ=12", "BSZPERDEV=4", "NDEV=2"], []) == [
        "TOTALBSZ 12: not a multiple of devices (2) x BSZPERDEV (4) = 8"]
    # A flag passed on overrides the variable (the last occurrence wins).
    assert sft_sh_problems(["EPOCHS=0"], ["--max_steps=5"]) == []
    assert sft_sh_problems(["LR=1e-5"], ["--learning_rate", "-1", "--learning_rate", "inf"]) == [
        "--learning_rate 'inf': expected a finite number >= 0"]
    with pytest.raises(SettingsError, match=r"--lr_scheduler_type 'foo': not a scheduler; one of linear, cosine"):
        check_settings({"lr_scheduler_type": "foo"})


@pytest.mark.parametrize("env, shown", [
    ({"TOTALBSZ": "0"}, "TOTALBSZ '0': expected an integer >= 1"),
    ({"TOTALBSZ": "8", "BSZPERDEV": "0"}, "BSZPERDEV '0': expected an integer >= 1"),
    ({"LR": "nan", "EPOCHS": "0"}, "EPOCHS 0 with --max_steps unset: trains nothing"),
])
def test_sft_sh_checks_its_variables_before_launching(tmp_path, env, shown):
    from test_sft_sh import dry_run, fake_bin

    r = dry_run(fake_bin(tmp_path), **{"CPU_RANKS": "2", **env})
    assert r.returncode == 2 and f"[settings] error: {shown}" in r.stderr, r.stderr
    assert "division by 0" not in r.stderr and "unbound variable" not in r.stderr and "deepspeed" not in r.stdout
