"""smolsft/hardware/device.py and the summary.json fields it feeds: a run's summary names the
generation dtype, the engine and its version, and the machine that generated the answers."""
import json

from ifeval import run_ifeval as ri
from smolsft.files import REPO_ROOT
from smolsft.hardware.device import cpu_model, device_record

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile
"""


def test_cpu_record_from_cpuinfo(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(CPUINFO)
    assert cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"
    rec = device_record("cpu", str(p))
    assert rec["type"] == "cpu" and rec["name"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert rec["bf16_flags"] == ["amx_bf16", "avx512_bf16"]
    assert cpu_model("processor : 0\n") is None


def test_summary_names_dtype_engine_and_device(tmp_path):
    rfile = tmp_path / "responses_m.jsonl"
    lines = [json.loads(x) for x in open(REPO_ROOT / ri.DEFAULT_INPUT, encoding="utf-8")][:2]
    rfile.write_text("".join(json.dumps({"key": r["key"], "prompt": r["prompt"], "response": "hi"}) + "\n"
                             for r in lines))
    settings = ri.generation_settings(ri.build_parser().parse_args(["--output_dir", "x"]), "m", "hf", "cpu")
    assert settings["device"]["type"] == "cpu"
    settings["device"] = {"type": "cpu", "name": "Some CPU", "bf16_flags": ["amx_bf16"], "bf16_hardware": True}
    (tmp_path / "responses_m.settings.json").write_text(json.dumps(settings))
    res = ri.main(["--mode", "eval", "--input_response_data", str(rfile), "--output_dir", str(tmp_path / "ev"),
                   "--limit", "2"])
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s == res["summary"]
    assert s["device"] == settings["device"] and s["dtype"] == settings["dtype"]
    assert s["backend"] == "hf" and s["engine_version"].startswith("transformers ")
    assert set(s["intervals"]) == {"prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                   "inst_level_loose_acc"}
