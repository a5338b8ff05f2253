"""How well each way of framing the role-confusion judge separates real turns.

The judge (``simulator_measures.role_scores``, through ``framed_role_scores``) calls a text
an assistant answer when the base model finds ``log p(text <|im_end|> | h, <|im_start|>assistant\\n)`` above
``log p(text <|im_end|> | h, <|im_start|>user\\n)``. This script scores the first ``--pairs``
real (user turn, answer) pairs of the data (``simulator_measures.real_turn_items``) under
several ``h`` and prints, per framing: the share of real user turns and of real answers
read as answers (threshold 0), their gap, the gap in slices of 16 pairs, and the AUC (the
chance that a real answer scores above a real user turn). docs/simulator.md has a run.

    python benchmarks/role_judge.py                       # SmolLM2-135M, data/demo_sft.json, 48 pairs
    python benchmarks/role_judge.py --dtype bfloat16 --framings newline
"""
from __future__ import annotations

import argparse
import json
import time

from smolsft.chat.format import normalize_conversation
from smolsft.files import REPO_ROOT
from smolsft.simulator import measures as sm
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer


# framing name -> (what it is, function of the history giving the text before the role header)
FRAMINGS = {
    "newline": ("a newline, no history (the measure's default)", lambda h: "\n"),
    "newline_hist2": ("the newline and the last 2 messages", lambda h: "\n" + sm.chatml_turns(h[-2:])),
    "hist2": ("the last 2 messages without the newline", lambda h: sm.chatml_turns(h[-2:])),
    "endoftext": ("<|endoftext|>, no history", lambda h: "<|endoftext|>"),
    "system": ("the newline and a system message", lambda h: "\n" + sm.chatml_turns(
        [{"role": "system", "content": "You are a helpful AI assistant."}])),
    "nothing": ("nothing: the role header opens the sequence", lambda h: ""),
}


def auc(pos: list[float], neg: list[float]) -> float:
    """P(a positive scores above a negative), ties counting one half (Mann-Whitney)."""
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(DEFAULT_MODEL), help="the judge (default: the embedded SmolLM2-135M)")
    ap.add_argument("--data", default=str(REPO_ROOT / "data" / "demo_sft.json"), help="chat data (JSON list)")
    ap.add_argument("--pairs", type=int, default=48, help="first N real (user, answer) pairs (default 48)")
    ap.add_argument("--framings", default=",".join(FRAMINGS), help=f"comma-separated, of {', '.join(FRAMINGS)}")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch_size", type=int, default=8)
    args = ap.parse_args(argv)
    names = args.framings.split(",")
    unknown = [n for n in names if n not in FRAMINGS]
    if unknown:
        ap.error(f"--framings: unknown {', '.join(unknown)} (known: {', '.join(FRAMINGS)})")

    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype)).eval()
    records = json.loads(open(args.data).read())
    convs = [c for c in (normalize_conversation(r.get("conversations") or r.get("messages")) for r in records) if c]
    users, answers = sm.real_turn_items(convs)
    users, answers = users[:args.pairs], answers[:args.pairs]
    print(f"[role_judge] {args.model} ({args.dtype}), {len(users)} real pairs of {args.data}")
    print("| framing | real user | real answers | gap | gap in slices of 16 | AUC | s |")
    print("|---|---|---|---|---|---|---|")
    out = {}
    for name in names:
        t0 = time.perf_counter()
        before = FRAMINGS[name][1]
        su = sm.framed_role_scores(model, tok, users, before, args.batch_size, f"{name}: real user turns")
        sa = sm.framed_role_scores(model, tok, answers, before, args.batch_size, f"{name}: real answers")
        ru, ra = sm.reads_as_assistant(su), sm.reads_as_assistant(sa)
        slices = [sm.reads_as_assistant(sa[i:i + 16]) - sm.reads_as_assistant(su[i:i + 16])
                  for i in range(0, len(su) - 15, 16)]
        out[name] = {"real_user": ru, "real_answers": ra, "gap": ra - ru, "slices": slices, "auc": auc(sa, su)}
        print(f"| {FRAMINGS[name][0]} | {ru:.0%} | {ra:.0%} | {ra - ru:.0%} | "
              f"{' / '.join(f'{g:.0%}' for g in slices)} | {out[name]['auc']:.2f} | {time.perf_counter() - t0:.0f} |",
              flush=True)
    best = max(out, key=lambda n: out[n]["gap"])
    print(f"[role_judge] widest gap: {best} ({out[best]['gap']:.0%}, AUC {out[best]['auc']:.2f}) over {len(users)} pairs")
    return out


if __name__ == "__main__":
    main()
