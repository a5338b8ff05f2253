"""smolsft/generation/responses.py: the response file (resume after a killed write, bad lines named
by file and line), the settings guard and the sidecar, file names."""
import json
import os
import socket

import pytest

from smolsft.generation import responses as rs
from smolsft.lock import FolderLockedError, folder_lock

SETTINGS = {"model_path": "/m", "max_tokens": 20, "temperature": 0.0, "top_p": 1.0, "system_message": None,
            "seed": 0, "engine": "vllm", "engine_version": "vllm 0.32.0", "dtype": "float32"}


def test_model_label():
    assert rs.model_label("/x/ckpt/HW2/checkpoint-500") == "HW2_checkpoint-500"
    assert rs.model_label("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M"
    assert rs.model_label("/x/my model/") == "my_model"
    assert rs.default_responses_path("out", "/x/HW2").as_posix() == "out/responses_HW2.jsonl"
    assert rs.settings_path(rs.default_responses_path("out", "/x/HW2")).name == "responses_HW2.settings.json"


def test_read_answered_drops_half_written_last_line(tmp_path, capsys):
    f = tmp_path / "r.jsonl"
    good = '{"key": 1, "response": "a"}\n{"key": 2, "response": "b"}\n'
    f.write_text(good + '{"key": 3, "resp')
    assert sorted(rs.read_answered(f)) == [1, 2]
    assert f.read_text() == good  # cut back to the last complete record
    assert "r.jsonl:3: incomplete last line" in capsys.readouterr().err
    assert rs.read_answered(tmp_path / "absent.jsonl") == {}


def test_read_answered_rejects_bad_line_mid_file(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"key": 1, "response": "a"}\nnot json\n{"key": 2, "response": "b"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2: not a response record"):
        rs.read_answered(f)
    f.write_text('{"key": 1, "response": "a"}\n{"key": 1, "response": "b"}\n')
    with pytest.raises(rs.ResponseFileError, match=r"r\.jsonl:2: prompt key 1 answered twice \(first on line 1\)"):
        rs.read_answered(f)
    f.write_text('{"key": "1", "response": "a"}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:1: .*integer 'key'"):
        rs.read_answered(f)


def test_settings_guard(tmp_path):
    f = tmp_path / "responses_m.jsonl"
    rs.check_settings(f, SETTINGS, 0)  # a new file: the sidecar is written
    assert json.loads(rs.settings_path(f).read_text()) == SETTINGS
    rs.check_settings(f, SETTINGS, 5)  # same settings: resume
    # Another engine (or version, dtype, token limit) with answers in the file: refused, every difference named.
    other = {**SETTINGS, "engine": "hf", "engine_version": "transformers 5.19.0", "max_tokens": 30}
    with pytest.raises(SystemExit, match=r"5 answers made with other settings \(max_tokens: file 20 vs now 30; "
                                         r"engine: file 'vllm' vs now 'hf'; engine_version: "):
        rs.check_settings(f, other, 5)
    assert json.loads(rs.settings_path(f).read_text()) == SETTINGS  # untouched by the refused run
    rs.check_settings(f, other, 0)  # no answer yet: the new settings replace the old
    assert rs.read_settings(f) == other


def test_writer_appends_durably(tmp_path):
    f = tmp_path / "sub" / "r.jsonl"
    w = rs.ResponseWriter(f)
    w.write([{"key": 1, "response": "é"}])
    assert f.read_text(encoding="utf-8") == '{"key": 1, "response": "é"}\n'  # on disk before close
    w.write([{"key": 2, "response": "b"}])
    w.close()
    assert sorted(rs.read_answered(f)) == [1, 2]


def test_checkpoint_retrained_in_place_is_not_resumed(tmp_path):
    """Answers of a checkpoint are not resumed for another checkpoint saved into the same
    folder (the weights' fingerprint is a generation setting); a hub id has none."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights of run 1")
    (ckpt / "trainer_state.json").write_text("{}")  # not a weight file: ignored
    first = rs.checkpoint_fingerprint(str(ckpt))
    (ckpt / "trainer_state.json").write_text('{"global_step": 9}')
    assert rs.checkpoint_fingerprint(str(ckpt)) == first
    (ckpt / "model.safetensors").write_bytes(b"weights of run 2")
    second = rs.checkpoint_fingerprint(str(ckpt))
    assert second != first and len(second) == 16
    assert rs.checkpoint_fingerprint("HuggingFaceTB/SmolLM2-135M") is None

    responses = tmp_path / "out" / "responses_ckpt.jsonl"
    base = {"model_path": str(ckpt), "max_tokens": 8}
    rs.check_settings(responses, {**base, "model_fingerprint": first}, 0)
    with pytest.raises(SystemExit, match=f"model_fingerprint: file '{first}' vs now '{second}'"):
        rs.check_settings(responses, {**base, "model_fingerprint": second}, 3)


# ------------------------------------------------------------ one writer per folder
def test_folder_lock_refuses_second_writer_naming_the_first(tmp_path):
    """A second holder (another open file description: what another process would have;
    flock conflicts between them even inside one process) is refused at once, and the
    message names the first holder from its owner record."""
    out = tmp_path / "res"
    with folder_lock(out, "IFEval run"):
        rec = json.loads((out / ".writer.json").read_text())
        assert rec["pid"] == os.getpid() and rec["what"] == "IFEval run" and rec["host"] == socket.gethostname()
        with pytest.raises(FolderLockedError, match=rf"IFEval run {out} is in use by pid {os.getpid()} on "):
            with folder_lock(out, "IFEval run"):
                pass
        assert (out / ".writer.json").is_file()  # the refused one did not touch the record
    assert not (out / ".writer.json").exists()  # released: the record goes
    with folder_lock(out, "again"):  # and the folder can be taken again
        pass


def test_folder_lock_takes_over_from_a_dead_run(tmp_path, capsys):
    """A killed run leaves its owner record (the OS released its lock): the next run says
    whose it was and takes over."""
    out = tmp_path / "res"
    out.mkdir()
    dead_pid = int(open("/proc/sys/kernel/pid_max").read()) + 1 if os.path.exists("/proc/sys/kernel/pid_max") else 2**22 + 1
    (out / ".writer.json").write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": 0,
                                                      "what": "IFEval run", "command": "python ifeval/run_ifeval.py X"}))
    with folder_lock(out, "IFEval run"):
        assert json.loads((out / ".writer.json").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"pid {dead_pid} on {socket.gethostname()}" in err and "ended without releasing" in err


def test_writer_creates_nothing_before_first_write(tmp_path):
    """The response file and (through before_first_write) the sidecar appear with the
    first answers, not when the writer is made: a run whose engine fails to start leaves
    no empty file behind."""
    f = tmp_path / "sub" / "responses_m.jsonl"
    w = rs.ResponseWriter(f, before_first_write=lambda: rs.write_settings(f, SETTINGS))
    w.close()
    assert not (tmp_path / "sub").exists()
    w = rs.ResponseWriter(f, before_first_write=lambda: rs.write_settings(f, SETTINGS))
    w.write([{"key": 1, "response": "a"}])
    w.close()
    assert rs.read_settings(f) == SETTINGS and sorted(rs.read_answered(f)) == [1]


def test_sidecar_without_too_long_resumes_as_clip(tmp_path):
    """A sidecar written before --too_long existed was made with the clip rule's default."""
    f = tmp_path / "responses_m.jsonl"
    rs.write_settings(f, SETTINGS)  # no "too_long" key
    rs.check_settings(f, {**SETTINGS, "too_long": "clip"}, 3)
    with pytest.raises(SystemExit, match="too_long: file 'clip' vs now 'skip'"):
        rs.check_settings(f, {**SETTINGS, "too_long": "skip"}, 3)
