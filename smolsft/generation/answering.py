"""Answer a set of prompts into a response file (``smolsft/generation/responses.py``), with
either engine; the generation run under ``ifeval/run_ifeval.py``, for any keyed prompts.

    plan = plan_prompts(tokenizer, records, system_message, max_tokens, max_len, "clip", log)
    generate = engine_generate("vllm", model_path, tokenizer, stop_ids, "cpu", "float32", options)
    answers = write_answers(responses, settings, plan, generate)

``records`` are ``{"key": int, "prompt": str}`` dicts. Prompts that do not fit the model
(:func:`smolsft.generation.engines.plan_new_tokens`) are settled before any engine starts:
a clipped one is answered with fewer new tokens (its record carries ``max_new_tokens``), a
skipped one gets an empty record with ``"finish_reason": "too_long"``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from smolsft.generation.engines import (
    DEFAULT_HF_BATCH, DEFAULT_VLLM_CHUNK, OnBatch, choose_enforce_eager, engine_line, generate_hf, generate_vllm,
    load_hf_model, plan_new_tokens, render_prompts, verbose_requested,
)
from smolsft.generation.responses import TOO_LONG_REASON, ResponseWriter, check_settings, read_answered, write_settings

# generate(prompts, new_tokens, on_batch) -> one finish_answer dict per prompt, in order.
Generate = Callable[[list[str], list[int], OnBatch], list[dict]]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


# ------------------------------------------------------------------ what to answer
def unanswered(selected: list[dict], responses, settings: dict, device: str, log=_stderr) -> list[dict]:
    """The ``selected`` records that ``responses`` does not answer yet. Refuses
    (SystemExit naming each difference) a file whose answers were made with other
    ``settings``; logs what is left to do."""
    done = read_answered(responses)
    check_settings(responses, settings, len(done), write=False)  # written with the first answers
    todo = [r for r in selected if r["key"] not in done]
    log(f"[ifeval] {len(selected)} prompts: {len(selected) - len(todo)} already answered in {responses}, "
        f"{len(todo)} to generate with {settings['engine_version']} on {device} ({settings['dtype']})")
    return todo


@dataclass
class PromptPlan:
    """The prompts of one run with their new-token budgets. ``records[i]`` is rendered as
    ``rendered[i]`` (``prompt_tokens[i]`` tokens) and may generate ``budgets[i]`` new
    tokens (``None``: skipped); ``clipped``/``skipped`` are indices into ``records``."""
    records: list[dict]
    rendered: list[str]
    prompt_tokens: list[int]
    budgets: list[Optional[int]]
    clipped: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    @property
    def kept(self) -> list[int]:
        """Indices of the prompts an engine answers."""
        return [i for i, b in enumerate(self.budgets) if b is not None]


def plan_prompts(tokenizer, records: list[dict], system_message: Optional[str], max_tokens: int,
                 max_len: Optional[int], too_long: str, log=_stderr) -> PromptPlan:
    """Render ``records`` (:func:`render_prompts`), count their tokens and settle those
    that do not fit ``max_len`` (model length in tokens; ``None``: unknown) with
    ``max_tokens`` new tokens under ``too_long`` (``clip``/``skip``), one ``log`` line per
    such prompt, naming its key."""
    rendered = render_prompts(tokenizer, records, system_message)
    lens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in rendered]
    budgets, clipped, skipped = plan_new_tokens(lens, max_tokens, max_len, too_long)
    head = "[ifeval] prompt key {key}: {n} prompt tokens + --max_tokens {m} > {L} (model length): "
    for i in clipped:
        log(head.format(key=records[i]["key"], n=lens[i], m=max_tokens, L=max_len)
            + f"clipped to {budgets[i]} new tokens")
    for i in skipped:
        log(head.format(key=records[i]["key"], n=lens[i], m=max_tokens, L=max_len)
            + f"skipped (--too_long {too_long}), scored as failed")
    return PromptPlan(records, rendered, lens, budgets, clipped, skipped)


def skipped_records(plan: PromptPlan) -> list[dict]:
    """The response records of the skipped prompts (empty answers, ``finish_reason`` too_long)."""
    return [{"key": plan.records[i]["key"], "prompt": plan.records[i]["prompt"], "response": "", "num_tokens": 0,
             "finish_reason": TOO_LONG_REASON, "prompt_tokens": plan.prompt_tokens[i]} for i in plan.skipped]


def answer_records(plan: PromptPlan, indices: list[int], answers: list[dict]) -> list[dict]:
    """Response records for ``answers`` to the kept prompts ``indices`` (positions in
    ``plan.kept``); a clipped prompt's record carries its ``max_new_tokens``."""
    kept, clipped = plan.kept, set(plan.clipped)
    out = []
    for i, a in zip(indices, answers):
        j = kept[i]
        extra = {"max_new_tokens": plan.budgets[j]} if j in clipped else {}
        out.append({"key": plan.records[j]["key"], "prompt": plan.records[j]["prompt"], **a, **extra})
    return out


def write_answers(responses, settings: dict, plan: PromptPlan, generate: Generate) -> list[dict]:
    """Answer the kept prompts with ``generate`` and append every record to ``responses``
    as each batch finishes (skipped prompts' records go with the first batch, or alone
    when nothing is generated). The settings sidecar is written just before the first
    record, so a failed engine start leaves no file. Returns the engine's answers."""
    writer = ResponseWriter(responses, before_first_write=lambda: write_settings(responses, settings))
    pending = skipped_records(plan)

    def on_batch(indices: list[int], answers: list[dict]) -> None:
        writer.write(pending + answer_records(plan, indices, answers))
        pending.clear()

    kept = plan.kept
    try:
        answers = generate([plan.rendered[i] for i in kept], [plan.budgets[i] for i in kept], on_batch) \
            if kept else []
        if pending:  # every prompt was skipped: no engine ran
            writer.write(pending)
    finally:
        writer.close()
    return answers


def run_stats(backend: str, resumed: int, plan: Optional[PromptPlan], answers: list[dict], seconds: float,
              timings: dict) -> dict:
    """A run's statistics: answers ``generated`` (and their ``tokens``, how many
    ``hit_max_tokens``), ``resumed`` (already in the file), ``clipped``/``skipped``
    prompts, ``seconds`` in all and ``startup_s`` of the engine, and the ``backend``."""
    return {"generated": len(answers), "resumed": resumed, "tokens": sum(a["num_tokens"] for a in answers),
            "hit_max_tokens": sum(a["finish_reason"] == "length" for a in answers), "seconds": seconds,
            "startup_s": timings.get("startup_s", 0.0), "backend": backend,
            "clipped": len(plan.clipped) if plan else 0, "skipped": len(plan.skipped) if plan else 0}


def stats_line(stats: dict, max_tokens: int) -> str:
    """One line on a run that generated answers: count, engine, time, tokens/s of generation."""
    gen_s = max(stats["seconds"] - stats["startup_s"], 1e-9)
    return (f"[ifeval] generated {stats['generated']} answers with {stats['backend']} in {stats['seconds']:.1f}s "
            f"(start {stats['startup_s']:.1f}s, {stats['tokens'] / gen_s:.1f} tokens/s of generation); "
            f"{stats['hit_max_tokens']} hit --max_tokens {max_tokens}")


# -------------------------------------------------------------------- the engines
@dataclass
class EngineOptions:
    """Engine settings besides model, device and dtype (``ifeval/run_ifeval.py``'s flags of
    the same names). ``batch_size`` ``None``: the engine's default."""
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    vllm_mode: str = "auto"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    kv_cache_gib: Optional[float] = None
    cpu_threads_bind: Optional[str] = None
    batch_size: Optional[int] = None
    verbose: Optional[bool] = None

    @classmethod
    def from_args(cls, args) -> "EngineOptions":
        return cls(**{k: getattr(args, k) for k in cls.__dataclass_fields__})


def engine_generate(backend: str, model_path: str, tokenizer, stop_ids: list[int], device: str, dtype: str,
                    version: str, options: EngineOptions, timings: dict) -> Generate:
    """A :data:`Generate` for ``backend`` (``vllm`` or ``hf``); the engine starts when it is
    called. ``timings`` receives ``startup_s`` (seconds to start the engine)."""
    o = options

    def vllm(prompts, new_tokens, on_batch):
        return generate_vllm(
            model_path, tokenizer, prompts, max_new_tokens=new_tokens, stop_ids=stop_ids, temperature=o.temperature,
            top_p=o.top_p, seed=o.seed, device=device, dtype=dtype,
            enforce_eager=choose_enforce_eager(o.vllm_mode, device), tensor_parallel_size=o.tensor_parallel_size,
            gpu_memory_utilization=o.gpu_memory_utilization, kv_cache_gib=o.kv_cache_gib,
            threads_bind=o.cpu_threads_bind, chunk_size=o.batch_size or DEFAULT_VLLM_CHUNK, on_batch=on_batch,
            timings=timings, verbose=o.verbose)

    def hf(prompts, new_tokens, on_batch):
        model = start_hf(model_path, device, dtype, version, o.verbose, timings)
        return generate_hf(model, tokenizer, prompts, max_new_tokens=new_tokens, stop_ids=stop_ids,
                           temperature=o.temperature, top_p=o.top_p, batch_size=o.batch_size or DEFAULT_HF_BATCH,
                           seed=o.seed, on_batch=on_batch)

    return vllm if backend == "vllm" else hf


def start_hf(model_path: str, device: str, dtype: str, version: str, verbose: Optional[bool], timings: dict,
             log=_stderr):
    """The transformers model in ``dtype`` on ``device``, with its one :func:`engine_line`
    (transformers' INFO logs on when verbose); ``timings["startup_s"]`` is set."""
    import torch

    if verbose_requested(verbose):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_info()
    t0 = time.perf_counter()
    model = load_hf_model(model_path, device, dtype)
    timings["startup_s"] = time.perf_counter() - t0
    log(engine_line(version, device, dtype, timings["startup_s"],
                    threads=str(torch.get_num_threads()) if device == "cpu" else None))
    return model
