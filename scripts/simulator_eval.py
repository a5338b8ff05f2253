"""The user simulator's held-out split and measures, base model vs simulator
(``smolsft/simulator/measures.py`` defines each measure).

    python scripts/simulator_eval.py split --data data/demo_sft.json --heldout 40 --out_dir sim_out/split
    python scripts/simulator_eval.py measure --base SmolLM2-135M --simulator sim_out/ckpt/simulator \\
        --heldout sim_out/split/heldout.json --dialogues sim_out/dialogues/dialogues.jsonl --output sim_out/measures.json

``split`` writes ``train.json`` (train the simulator on it), ``heldout.json`` (never trained
on) and ``split.json`` (the data file's sha256, the held-out ids, the rule), the same
records on every run. ``measure`` writes one JSON with, for the base model and the
simulator: the user-turn loss and perplexity on the held-out conversations, back-translation
chrF on the held-out single-turn pairs; role confusion (judge: the base model) on real
user turns, real assistant turns and, once it separates those (rates at least
``--min_gap`` apart), on the simulator's turns in ``--dialogues``; diversity of those turns
and of the real held-out user turns; and UserLM's six measures (``six_measures``: first-turn
diversity, intent decomposition, end-of-conversation F1, role adherence, intent adherence,
naturalness) for ``base``, ``prompted_user`` (the base checkpoint, an Instruct model, told
to play the user), ``simulator`` and ``human`` where a measure applies, each with its
interval and count (``smolsft/simulator/six_measures.py``; docs/simulator.md).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from smolsft.chat.format import is_single_turn_conversation, normalize_conversation
from smolsft.files import file_sha256, resolve_path
from reverse_conversation_func import simulator_prompt
from smolsft.simulator import measures as sm
from smolsft.simulator import protocol, six_measures
from smolsft.simulator.baselines import prompted_user_prompt
from smolsft.simulator.dialogue import simulator_training
from smolsft.simulator.intent import SOURCE_FIELD

SALT = "simulator-heldout"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_split(args) -> dict:
    from smolsft.data import sft as sft_data
    records = [rec for _, rec in sft_data.read_records(args.data)]
    train, held = sm.heldout_split(records, args.heldout, SALT)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps([records[i] for i in train], ensure_ascii=False))
    (out / "heldout.json").write_text(json.dumps([records[i] for i in held], ensure_ascii=False))
    meta = {"data": args.data, "data_sha256": file_sha256(Path(args.data)), "salt": SALT,
            "rule": "the n records with the smallest sha256(salt + id) are held out",
            "n_train": len(train), "n_heldout": len(held),
            "heldout_ids": [str(records[i].get("id", i)) for i in held]}
    (out / "split.json").write_text(json.dumps(meta, indent=1))
    print(f"[split] {args.data}: {len(train)} train, {len(held)} held out -> {out}/train.json, heldout.json, split.json")
    return meta


def load_model(path: str):
    """The checkpoint in float32 whatever the machine, so that the measures of one run
    compare with another's on a CPU without bf16 or a GPU (bf16 moves them a little:
    docs/simulator.md)."""
    from smolsft.generation.engines import load_hf_model

    return load_hf_model(path, "cpu" if not _cuda() else "cuda", dtype="float32")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def heldout_inputs(args) -> dict:
    """Everything the measures read from the held-out split and the demo's dialogues: the
    conversations, the single-turn pairs to back-translate, real user/assistant turns for the
    role judge, the simulator's generated turns (with the history before each), the six
    measures' dialogues and items, and the intents the held-out loss masks with."""
    held = json.loads(Path(args.heldout).read_text())
    convs = [c for c in (normalize_conversation(r.get("conversations") or r.get("messages")) for r in held) if c]
    singles = [c for c in convs if is_single_turn_conversation(c)][:args.chrf_items or None]
    real_users, real_answers = sm.real_turn_items(convs)
    if args.role_items:
        real_users, real_answers = real_users[:args.role_items], real_answers[:args.role_items]
    dialogues = [json.loads(x) for x in Path(args.dialogues).read_text().splitlines()] if args.dialogues else []
    gen_items, gen_prev = [], []
    for d in dialogues:
        msgs = d["messages"]
        for k, m in enumerate(msgs):
            if m["author"] == "simulator":
                gen_items.append(([{"role": x["role"], "content": x["content"]} for x in msgs[:k]], m["content"]))
                gen_prev.append(msgs[k - 1]["content"])
    six_dialogues = protocol.heldout_dialogues(held)
    return {"convs": convs, "singles": singles,
            "bt_inputs": [sorted([m for m in c if m["role"] != "user"], key=lambda m: m["role"] != "system")
                          for c in singles],
            "bt_refs": [next(m["content"] for m in c if m["role"] == "user") for c in singles],
            "real_users": real_users, "real_answers": real_answers, "dialogues": dialogues,
            "gen_items": gen_items, "gen_prev": gen_prev, "six_dialogues": six_dialogues,
            "six_items": six_measures.build_items(six_dialogues, args.probe_items, args.first_items, args.eoc_items),
            "loss_intents": [d["intent"] if d["intent_source"] == SOURCE_FIELD else None for d in six_dialogues]}


def role_confusion(model, tok, path: str, inp: dict, args) -> dict:
    """The base model as the judge: real user and real assistant turns first; the simulator's
    turns only once those two are told apart by at least ``--min_gap``."""
    kw = dict(batch_size=args.batch_size, history_messages=args.role_history)
    real_u = sm.role_scores(model, tok, inp["real_users"], progress="role: real user turns", **kw)
    real_a = sm.role_scores(model, tok, inp["real_answers"], progress="role: real assistant turns", **kw)
    rate_u, rate_a = sm.reads_as_assistant(real_u), sm.reads_as_assistant(real_a)
    validated = bool(real_u) and rate_a - rate_u >= args.min_gap
    gen_scores = sm.role_scores(model, tok, inp["gen_items"], progress="role: generated user turns", **kw) \
        if validated and inp["gen_items"] else []
    return {"judge": path, "dtype": "float32", "history_messages": args.role_history, "min_gap": args.min_gap,
            "definition": "share of texts the judge finds more likely as the assistant's turn than as the "
                          "user's, after the same history (history_messages of it; 0: the text alone)",
            "real_user": {"n": len(real_u), "rate": rate_u}, "real_assistant": {"n": len(real_a), "rate": rate_a},
            "gap": rate_a - rate_u, "validated": validated,
            "generated_user": {"n": len(gen_scores), "rate": sm.reads_as_assistant(gen_scores)} if validated else None}


def measure_checkpoint(name: str, path: str, inp: dict, args, end_marker: bool, res: dict, six_gens: dict) -> None:
    """One checkpoint's part (``base`` also plays ``prompted_user`` and judges roles): its six
    measures' turns into ``six_gens``, its held-out user-turn loss and back-translation into ``res``."""
    from smolsft.chat.tokenization import load_tokenizer
    from smolsft.generation.engines import checkpoint_stop_ids, generate_hf

    tok, model = load_tokenizer(path, args.max_length), load_model(path)
    stops = checkpoint_stop_ids(tok, path)
    users = {name: lambda h, i, t=tok: simulator_prompt(h, t, intent=i)}
    if name == "base":  # the same weights told to play the user (an Instruct model)
        users["prompted_user"] = lambda h, i, t=tok: prompted_user_prompt(h, i, t)
    for user, prompt in users.items():
        log(f"[measure] {user}: six-measure turns ({six_measures.count_line(inp['six_items'])})")
        six_gens[user] = six_measures.generate_turns(model, tok, prompt, inp["six_items"], stops, args.gen_batch_size,
                                                     seed=args.seed, progress=user)
    log(f"[measure] {name}: user-turn loss on {len(inp['convs'])} held-out conversations")
    res["user_turn_loss"][name] = sm.user_turn_loss(model, tok, inp["convs"], args.max_length, args.batch_size,
                                                    progress=f"{name} user-turn loss", intents=inp["loss_intents"],
                                                    end_marker=end_marker)
    prompts = [simulator_prompt(x, tok, back_translation=True) for x in inp["bt_inputs"]]
    log(f"[measure] {name}: back-translation of {len(prompts)} answers")
    gen = generate_hf(model, tok, prompts, max_new_tokens=args.max_tokens, stop_ids=stops,
                      batch_size=args.batch_size, show_progress=True)
    hyps = [g["response"] for g in gen]
    res["back_translation"][name] = sm.chrf(hyps, inp["bt_refs"]) if hyps else None
    res["back_translation"][f"{name}_hypotheses"] = hyps
    if name == "base":  # the judge of role confusion is the starting model
        res["role_confusion"] = role_confusion(model, tok, path, inp, args)
    del model
    gc.collect()


def diversity(texts: list[str], prev: list[str]) -> dict:
    """Distinct-1/2, the share repeating a word 4-gram of the turn before, empties, mean words."""
    return {"turns": len(texts), "distinct_1": sm.distinct_n(texts, 1), "distinct_2": sm.distinct_n(texts, 2),
            "repeats_previous": (sum(sm.repeats_previous(t, p) for t, p in zip(texts, prev)) / len(texts)
                                 if texts else None),
            "empty": sum(1 for t in texts if not t.strip()),
            "mean_words": sum(len(sm.words(t)) for t in texts) / len(texts) if texts else None}


def real_followups(convs: list) -> tuple[list[str], list[str]]:
    """(real user turns that answer an assistant turn, the assistant turn before each)."""
    texts, prev = [], []
    for c in convs:
        for k, m in enumerate(c):
            if m["role"] == "user" and k > 0 and c[k - 1]["role"] == "assistant":
                texts.append(m["content"])
                prev.append(c[k - 1]["content"])
    return texts, prev


def print_summary(res: dict, output: str) -> None:
    L, B, R = res["user_turn_loss"], res["back_translation"], res["role_confusion"]
    g = R["generated_user"]
    print(f"[measure] user-turn perplexity {L['base']['perplexity']:.2f} -> {L['simulator']['perplexity']:.2f} "
          f"({L['base']['tokens']} tokens); chrF {B['base'] or 0:.1f} -> {B['simulator'] or 0:.1f} ({B['pairs']} pairs); "
          f"reads as assistant: real user {R['real_user']['rate']:.0%}, real assistant {R['real_assistant']['rate']:.0%}"
          f", generated {'n/a (not validated)' if g is None else format(g['rate'], '.0%')}; "
          f"distinct-2 {res['diversity']['generated_user']['distinct_2']}; {res['seconds']}s -> {output}")
    print("\n".join(six_measures.table_lines(res["six_measures"])))


def cmd_measure(args) -> dict:
    from smolsft.chat.tokenization import load_tokenizer

    t0 = time.perf_counter()
    inp = heldout_inputs(args)
    convs, dialogues = inp["convs"], inp["dialogues"]
    paths = {"base": resolve_path(args.base), "simulator": resolve_path(args.simulator)}
    # The held-out loss masks as the simulator was trained: the records' own intents, its end marker.
    end_marker = bool((simulator_training(paths["simulator"]) or {}).get("simulator_end_marker"))
    res: dict = {"heldout": {"file": args.heldout, "conversations": len(convs), "single_turn_pairs": len(inp["singles"]),
                             "multi_turn": sum(1 for c in convs if not is_single_turn_conversation(c))},
                 "models": paths,
                 "user_turn_loss": {"masking": {"intents": sum(1 for x in inp["loss_intents"] if x),
                                                "end_marker": end_marker}},
                 "back_translation": {"metric": f"chrF (sacrebleu {version('sacrebleu')}, corpus level)",
                                      "pairs": len(inp["singles"]), "max_tokens": args.max_tokens, "examples": []}}
    six_gens: dict = {}
    for name, path in paths.items():
        measure_checkpoint(name, path, inp, args, end_marker, res, six_gens)
    bt = res["back_translation"]
    bt["examples"] = [{"answer": x[-1]["content"][:300], "real_request": r, "base": b, "simulator": s}
                      for x, r, b, s in list(zip(inp["bt_inputs"], inp["bt_refs"], bt["base_hypotheses"],
                                                 bt["simulator_hypotheses"]))[:3]]
    res["diversity"] = {"phrase": "a shared word 4-gram with the assistant turn before",
                        "generated_user": diversity([t for _, t in inp["gen_items"]], inp["gen_prev"]),
                        "real_heldout_user": diversity(*real_followups(convs))}
    res["dialogues"] = {"file": args.dialogues, "count": len(dialogues),
                        "ended_by": dict(Counter(d.get("ended_by") for d in dialogues))}
    log("[measure] six measures: judging with the base model")
    judge, judge_tok = load_model(paths["base"]), load_tokenizer(paths["base"], args.max_length)
    calibration = real_user_texts(args.calibration or str(Path(args.heldout).with_name("train.json")),
                                  args.calibration_turns)
    res["six_measures"] = {"intent_source": six_measures.intent_sources(inp["six_dialogues"]),
                           "users": list(six_measures.USERS) + ["human"],
                           **six_measures.score({u: six_gens[u] for u in six_measures.USERS}, inp["six_items"], judge,
                                                judge_tok, calibration,
                                                [m["content"] for c in convs for m in c if m["role"] == "user"],
                                                args.batch_size)}
    del judge
    res["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=1, ensure_ascii=False))
    print_summary(res, args.output)
    return res


def real_user_texts(path: str, limit: int) -> list[str]:
    """The first ``limit`` user turns of a chat file (the naturalness detector's
    calibration); an error naming the file when it is missing."""
    if not Path(path).is_file():
        raise SystemExit(f"[measure] error: {path}: no calibration file (the split's train.json; --calibration)")
    out = []
    for r in json.loads(Path(path).read_text()):
        for m in normalize_conversation(r.get("conversations") or r.get("messages")):
            if m["role"] == "user" and len(out) < limit:
                out.append(m["content"])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="the fixed held-out split of a chat file")
    s.add_argument("--data", required=True, help="chat file (JSON list or JSONL)")
    s.add_argument("--heldout", type=int, default=40, help="records held out (default %(default)s)")
    s.add_argument("--out_dir", required=True)
    m = sub.add_parser("measure", help="base vs simulator measures on the held-out split")
    m.add_argument("--base", required=True, help="starting model (also the role-confusion judge)")
    m.add_argument("--simulator", required=True, help="simulator checkpoint")
    m.add_argument("--heldout", required=True, help="heldout.json from the split step")
    m.add_argument("--dialogues", default=None, help="dialogues.jsonl of scripts/simulate.py (generated turns)")
    m.add_argument("--output", required=True, help="measures JSON to write")
    m.add_argument("--max_length", type=int, default=1024, help="tokens per held-out conversation (right truncation)")
    m.add_argument("--max_tokens", type=int, default=64, help="new tokens per back-translated request")
    m.add_argument("--chrf_items", type=int, default=0, help="first N single-turn pairs, 0 = all")
    m.add_argument("--role_items", type=int, default=0, help="first N real user/assistant pairs, 0 = all")
    m.add_argument("--role_history", type=int, default=0,
                   help="last N history messages the judge sees (default 0: the text alone, see docs/simulator.md)")
    m.add_argument("--min_gap", type=float, default=0.5, help="real-turn rates must differ this much (default 0.5)")
    m.add_argument("--batch_size", type=int, default=4)
    m.add_argument("--first_items", type=int, default=0,
                   help="first N held-out dialogues whose first user turn each user writes, 0 = all")
    m.add_argument("--probe_items", type=int, default=0,
                   help="first N held-out dialogues for the role and intent adherence probes, 0 = all")
    m.add_argument("--eoc_items", type=int, default=0,
                   help="first N end-of-conversation states (after each assistant turn of the multi-turn "
                        "held-out dialogues), 0 = all")
    m.add_argument("--calibration", default=None,
                   help="chat file whose user turns set the naturalness threshold (default: train.json beside --heldout)")
    m.add_argument("--calibration_turns", type=int, default=64, help="user turns read from it (default %(default)s)")
    m.add_argument("--seed", type=int, default=0, help="sampling seed of the first turns")
    m.add_argument("--gen_batch_size", type=int, default=16,
                   help="prompts per generate() call for the six measures' turns (default %(default)s)")
    args = ap.parse_args(argv)
    return cmd_split(args) if args.command == "split" else cmd_measure(args)


if __name__ == "__main__":
    main()
