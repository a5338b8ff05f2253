"""Dialogues between an assistant checkpoint and a user simulator (a checkpoint trained
with ``--mask_mode reverse``): from the openings of a chat file, the assistant answers,
the simulator writes the next user turn, for ``--rounds`` assistant turns.

    python scripts/simulate.py --assistant ckpt/HW2 --simulator ckpt/simulator \\
        --openings data/demo_sft.json --output_dir sim_out --rounds 3 --limit 8

Prompts: the assistant sees the dialogue rendered with the chat template and the
assistant generation prompt; the simulator sees it rendered the way it was trained
(``reverse_conversation_func.simulator_prompt``: the system message ``You are a good
state predictor.`` unless the dialogue has one, with the user's intent added, then the dialogue, then ``<|im_start|>user\\n``).
An opening is a record's leading system message (if any) and its first user turn; its
intent is the record's ``"intent"`` field, else the stated stand-in, its first user request
(``smolsft/simulator/intent.py``; each dialogue says which; ``--no_intent`` gives none).

A dialogue ends when the simulator writes the end marker (``<|endconversation|>``, which a
simulator trained with ``--simulator_end_marker`` learns) or after ``--rounds`` assistant
turns: each dialogue record says ``"ended_by": "simulator"`` or ``"limit"``.

The simulator's ``run_manifest.json`` is read first: a checkpoint trained with
``--mask_mode assistant`` is refused (``--any_simulator`` runs it anyway, with a warning);
a folder without a manifest runs with a warning.

Engines: both models stay loaded in this one process (vLLM: two engines; ``--backend
hf``: transformers' ``generate()``), and each step generates the next turn of every
unfinished dialogue in one batch (``smolsft/generation/engines.py``'s engine settings: CPU threads,
KV cache size, dtype, stop ids).

Outputs in ``--output_dir``:
- ``turns.jsonl``: every generated turn as it is made (``{"key": dialogue * 1000 + turn,
  "dialogue", "turn", "role", "response", "num_tokens", "finish_reason"}``), appended and
  fsynced: a killed run resumes where it stopped (``smolsft/generation/responses.py``), and a rerun
  with other settings (``turns.settings.json``: models and their weight fingerprints,
  openings, rounds, sampling, engine) stops with an error instead of mixing two runs;
- ``dialogues.jsonl``: one dialogue per line, ``{"dialogue", "source", "intent",
  "intent_source", "ended_by", "messages": [{"role", "content", "author":
  "data"|"assistant"|"simulator"}]}``, written when all are done;
- ``dialogues.md``: the same for a person to read.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from smolsft.chat.format import ConversationFormatError, render_chat
from smolsft.files import resolve_path
from smolsft.generation.engines import (
    apply_cpu_engine_env, checkpoint_stop_ids, choose_enforce_eager, engine_version, finish_answer, kv_bytes_per_token,
    kv_cache_bytes, pick_backend, pick_dtype,
)
from smolsft.generation.responses import ResponseWriter, check_settings, checkpoint_fingerprint, read_answered
from reverse_conversation_func import simulator_prompt
from smolsft.chat.tokenization import load_tokenizer
from smolsft.simulator.dialogue import TURN_KEY, add_turn, assemble, check_simulator, next_turn, write_markdown
from smolsft.simulator.intent import record_intent

SETTINGS_KEYS = ("assistant_path", "assistant_fingerprint", "simulator_path", "simulator_fingerprint",
                 "openings_hash", "limit", "rounds", "max_tokens", "assistant_temperature", "simulator_temperature",
                 "top_p", "seed", "engine", "engine_version", "dtype", "intent")
# Two engines share the machine: each KV cache takes at most this share of the free memory.
KV_SHARE_PER_ENGINE = 0.25


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- openings
def read_openings(path: str, limit: int = 0) -> list[dict]:
    """``{"source", "opening": [system?, user], "intent", "intent_source"}`` per record of
    a chat file (any format ``sft_data`` reads), in file order; ``limit > 0`` keeps the
    first ones. A record that normalizes to nothing is skipped; a malformed one (or a
    malformed ``"intent"``) is an error naming it."""
    from smolsft.data import sft as sft_data
    from smolsft.chat.format import normalize_conversation

    out = []
    for where, rec in sft_data.read_records(path):
        try:
            msgs = normalize_conversation(sft_data.record_messages(rec, where, "conversations"))
            intent, intent_source = record_intent(rec, msgs) if msgs else (None, None)
        except (ConversationFormatError, ValueError) as e:
            raise SystemExit(f"[simulate] error: {where}: {e}") from None
        if not msgs:
            continue
        k = next(i for i, m in enumerate(msgs) if m["role"] == "user")
        opening = [{"role": m["role"], "content": m["content"]} for m in msgs[:k + 1]]
        source = rec.get("id", where) if isinstance(rec, dict) else where
        out.append({"source": str(source), "opening": opening, "intent": intent, "intent_source": intent_source})
        if limit and len(out) >= limit:
            break
    if not out:
        raise SystemExit(f"[simulate] error: {path}: no conversation to open a dialogue with")
    return out


# -------------------------------------------------------------------------- engines
class Engine:
    """One checkpoint kept loaded for the whole run: ``generate(prompts, ...)`` returns
    ``smolsft.generation.engines.finish_answer`` dicts in the prompts' order."""

    def __init__(self, model_path: str, backend: str, device: str, max_model_len: int, n_seqs: int, name: str):
        self.path, self.backend, self.name = model_path, backend, name
        self.tokenizer = load_tokenizer(model_path, max_model_len)
        self.stop_ids = checkpoint_stop_ids(self.tokenizer, model_path)
        self.dtype = pick_dtype(device)
        self.max_model_len = max_model_len
        t0 = time.perf_counter()
        if backend == "vllm":
            kwargs = dict(model=model_path, tokenizer=model_path, dtype=self.dtype, seed=0,
                          enforce_eager=choose_enforce_eager("auto", device), max_model_len=max_model_len,
                          generation_config="vllm")
            if device == "cpu":
                apply_cpu_engine_env()
                if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                    import psutil

                    kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(
                        kv_bytes_per_token(model_path, self.dtype), n_seqs, max_model_len,
                        psutil.virtual_memory().available, KV_SHARE_PER_ENGINE)
            else:
                kwargs["gpu_memory_utilization"] = 0.4  # two engines on one GPU
            from vllm import LLM

            self.llm = LLM(**kwargs)
        else:
            from smolsft.generation.engines import load_hf_model

            self.model = load_hf_model(model_path, device, self.dtype)
        log(f"[simulate] {name} {model_path} loaded ({backend}, {self.dtype}) in {time.perf_counter() - t0:.1f}s")

    def generate(self, prompts: list[str], max_tokens: int, temperature: float, top_p: float,
                 seeds: list[int]) -> list[dict]:
        enc = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        too_long = [i for i, e in enumerate(enc) if len(e) + max_tokens > self.max_model_len]
        if too_long:
            raise SystemExit(f"[simulate] error: a {self.name} prompt of {len(enc[too_long[0]])} tokens + "
                             f"--max_tokens {max_tokens} exceeds --max_model_len {self.max_model_len}")
        if self.backend == "vllm":
            from vllm import SamplingParams

            params = [SamplingParams(temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                     max_tokens=max_tokens, stop_token_ids=list(self.stop_ids),
                                     seed=s if temperature > 0 else None, detokenize=False) for s in seeds]
            outs = self.llm.generate([{"prompt_token_ids": e} for e in enc], params, use_tqdm=False)
            return [finish_answer(self.tokenizer, o.outputs[0].token_ids, self.stop_ids) for o in outs]
        from smolsft.generation.engines import generate_hf

        return generate_hf(self.model, self.tokenizer, prompts, max_new_tokens=max_tokens, stop_ids=self.stop_ids,
                           temperature=temperature, top_p=top_p, seed=seeds[0] if seeds else 0,
                           show_progress=False)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assistant", required=True, help="assistant checkpoint (folder or hub id)")
    ap.add_argument("--simulator", required=True, help="user-simulator checkpoint (trained with --mask_mode reverse)")
    ap.add_argument("--openings", required=True, help="chat file whose records open the dialogues")
    ap.add_argument("--output_dir", required=True, help="folder for turns.jsonl, dialogues.jsonl, dialogues.md")
    ap.add_argument("--rounds", type=int, default=3, help="assistant turns per dialogue (default %(default)s)")
    ap.add_argument("--limit", type=int, default=8, help="first N openings, 0 = all (default %(default)s)")
    ap.add_argument("--max_tokens", type=int, default=128, help="new tokens per turn (default %(default)s)")
    ap.add_argument("--assistant_temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--simulator_temperature", type=float, default=0.7, help="default %(default)s")
    ap.add_argument("--top_p", type=float, default=0.95, help="when sampling (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed; each turn uses seed + its key")
    ap.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto",
                    help="auto: vLLM when installed, else transformers (default)")
    ap.add_argument("--max_model_len", type=int, default=4096, help="longest prompt + answer (default %(default)s)")
    ap.add_argument("--no_intent", action="store_true", help="do not tell the simulator the user's intent")
    ap.add_argument("--any_simulator", action="store_true",
                    help="run a simulator whose run_manifest.json says it was not trained with --mask_mode reverse")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.rounds >= TURN_KEY // 2:
        ap.error(f"--rounds must be in [1, {TURN_KEY // 2 - 1}]")
    return args


def run_settings(args, paths: dict, openings: list, backend: str, device: str) -> dict:
    """What makes two runs' turns comparable (checked against ``turns.jsonl``'s on a resume)."""
    return {
        "assistant_path": paths["assistant"], "assistant_fingerprint": checkpoint_fingerprint(paths["assistant"]),
        "simulator_path": paths["simulator"], "simulator_fingerprint": checkpoint_fingerprint(paths["simulator"]),
        "openings": paths["openings"],
        "openings_hash": hashlib.sha256(json.dumps(openings).encode()).hexdigest()[:16],
        "limit": args.limit, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "assistant_temperature": args.assistant_temperature, "simulator_temperature": args.simulator_temperature,
        "top_p": args.top_p, "seed": args.seed, "engine": backend, "engine_version": engine_version(backend),
        "dtype": pick_dtype(device), "intent": not args.no_intent,
    }


def turns_to_generate(dialogues: list[dict], rounds: int) -> int:
    """Turns still to write, at most: a simulator may end a dialogue sooner."""
    return sum(2 * rounds - 1 - sum(1 for m in d["messages"] if m["author"] != "data")
               for d in dialogues if d["ended_by"] is None)


def generation_step(dialogues: list[dict], engines: dict, args) -> Optional[tuple[str, list, list]]:
    """One batched step: (role, [(dialogue, turn)], answers) for the role most dialogues wait
    for (all of them, in lockstep runs); ``None`` when every dialogue has ended."""
    pending = [(d, t) for d in dialogues for t in [next_turn(d, args.rounds)] if t is not None]
    if not pending:
        return None
    role = max(("assistant", "user"), key=lambda r: sum((t % 2 == 0) == (r == "assistant") for _, t in pending))
    batch = [(d, t) for d, t in pending if (t % 2 == 0) == (role == "assistant")]
    hist = [[{"role": m["role"], "content": m["content"]} for m in d["messages"]] for d, _ in batch]
    if role == "assistant":
        eng, temp = engines["assistant"], args.assistant_temperature
        prompts = [render_chat(eng.tokenizer, h, add_generation_prompt=True) for h in hist]
    else:
        eng, temp = engines["simulator"], args.simulator_temperature
        prompts = [simulator_prompt(h, eng.tokenizer, intent=None if args.no_intent else d["intent"])
                   for h, (d, _) in zip(hist, batch)]
    keys = [d["dialogue"] * TURN_KEY + t for d, t in batch]
    answers = eng.generate(prompts, args.max_tokens, temp, args.top_p, [args.seed + k for k in keys])
    return role, batch, [{"key": k, **a} for k, a in zip(keys, answers)]


def generate_dialogues(dialogues: list[dict], todo: int, paths: dict, backend: str, device: str, args,
                       turns_path: Path) -> None:
    """Load both engines and write every missing turn to ``turns_path`` (appended as each
    step finishes, so a killed run resumes), adding it to its dialogue."""
    from tqdm import tqdm

    engines = {role: Engine(paths[role], backend, device, args.max_model_len, len(dialogues), role)
               for role in ("assistant", "simulator")}
    writer = ResponseWriter(turns_path)
    bar = tqdm(total=todo, desc="turns", unit="turn")
    try:
        while (step := generation_step(dialogues, engines, args)) is not None:
            role, batch, answers = step
            recs = [{"key": a["key"], "dialogue": d["dialogue"], "turn": t, "role": role, **a}
                    for (d, t), a in zip(batch, answers)]
            writer.write(recs)
            for (d, _), r in zip(batch, recs):
                add_turn(d, role, r["response"], args.rounds)
            bar.update(len(batch))
    finally:
        bar.close()
        writer.close()


def write_dialogues(out: Path, dialogues: list[dict], settings: dict) -> None:
    tmp = out / "dialogues.jsonl.tmp"
    tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
    os.replace(tmp, out / "dialogues.jsonl")
    write_markdown(out / "dialogues.md", dialogues, settings)


def summarize(dialogues: list[dict], rounds: int, generated: int, resumed: int, seconds: float) -> dict:
    sim_turns = [m for d in dialogues for m in d["messages"] if m["author"] == "simulator"]
    return {"dialogues": len(dialogues), "rounds": rounds, "generated_turns": generated,
            "resumed_turns": resumed, "simulator_turns": len(sim_turns),
            "empty_simulator_turns": sum(1 for m in sim_turns if not m["content"].strip()),
            "ended_by_simulator": sum(1 for d in dialogues if d["ended_by"] == "simulator"),
            "seconds": round(seconds, 1)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = pick_backend(args.backend, device)
    paths = {"assistant": resolve_path(args.assistant), "simulator": resolve_path(args.simulator),
             "openings": resolve_path(args.openings)}
    check_simulator(paths["simulator"], args.any_simulator, log)
    openings = read_openings(paths["openings"], args.limit)
    out = Path(args.output_dir)
    turns_path = out / "turns.jsonl"
    settings = run_settings(args, paths, openings, backend, device)
    try:
        done = read_answered(turns_path)
    except ValueError as e:
        raise SystemExit(f"[simulate] error: {e}") from None
    check_settings(turns_path, settings, len(done), keys=SETTINGS_KEYS, tag="simulate")
    dialogues = assemble(openings, done, args.rounds)
    todo, resumed = turns_to_generate(dialogues, args.rounds), len(done)
    if resumed:
        log(f"[simulate] resuming: {resumed} turns already in {turns_path}, at most {todo} to generate")
    if todo:
        generate_dialogues(dialogues, todo, paths, backend, device, args, turns_path)
        done = read_answered(turns_path)
        dialogues = assemble(openings, done, args.rounds)
    write_dialogues(out, dialogues, settings)
    summary = summarize(dialogues, args.rounds, len(done), resumed, time.perf_counter() - t_start)
    print(f"[simulate] {summary['dialogues']} dialogues x {args.rounds} rounds: {summary['generated_turns']} turns "
          f"({resumed} resumed, {summary['empty_simulator_turns']} empty user turns; "
          f"{summary['ended_by_simulator']} ended by the simulator) in {summary['seconds']}s; "
          f"{out / 'dialogues.jsonl'}, {out / 'dialogues.md'}")
    return summary


if __name__ == "__main__":
    main()
