"""Generated tokens per second on the CPU: IFEval prompts answered in batches (what
``ifeval/run_ifeval.py`` does: sorted by length, left padding) against one prompt at a
time, in one run, on the same model, prompts and settings.

    python benchmarks/generate.py                          # 16 prompts, 64 new tokens, greedy
    python benchmarks/generate.py --n 32 --batch_size 32 --repeats 2

Both variants go through ``run_ifeval.generate_hf`` with the same stop ids, so they
generate the same answers (the script counts how many are identical). Generated tokens
are the answers' tokens including the stop token, not the padding a finished row gets
while the rest of its batch goes on. A short warm-up generation runs first and is not
timed. With ``--repeats R`` the variants alternate R times and each keeps its fastest
run, which damps the effect of other processes on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ifeval.run_ifeval import (  # noqa: E402
    DEFAULT_INPUT, generate_hf, load_hf_model, load_prompt_set, model_stop_ids, render_prompts,
)
from utils import DEFAULT_MODEL, load_tokenizer, resolve_path  # noqa: E402


def timed(model, tok, prompts, batch_size, max_new_tokens, stop_ids, desc):
    t0 = time.perf_counter()
    answers = generate_hf(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          stop_ids=stop_ids, show_progress=True)
    secs = time.perf_counter() - t0
    tokens = sum(a["num_tokens"] for a in answers)
    print(f"  {desc}: {tokens} tokens in {secs:.1f}s = {tokens / secs:.1f} tokens/s", file=sys.stderr)
    return {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs, "answers": answers}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--prompts", default=DEFAULT_INPUT, help="IFEval prompt file; the first --n prompts are used")
    ap.add_argument("--n", type=int, default=16, help="number of prompts (default 16)")
    ap.add_argument("--batch_size", type=int, default=16, help="prompts per batch in the batched variant")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1, help="alternate the variants this many times, keep the best")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", help="also write the measurements to this file")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_path(args.model)
    tok = load_tokenizer(path, padding_side="left")
    model = load_hf_model(path, "cpu")
    _, records, _ = load_prompt_set(args.prompts, args.n)
    prompts = render_prompts(tok, records, None)
    stop_ids = model_stop_ids(tok, model)
    print(f"[bench] {path}: {len(prompts)} prompts, max_new_tokens {args.max_new_tokens}, greedy, "
          f"{torch.get_num_threads()} CPU threads", file=sys.stderr)
    generate_hf(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, stop_ids=stop_ids, show_progress=False)

    best: dict[str, dict] = {}
    for r in range(args.repeats):
        # Alternate which variant goes first so a slow spell does not always hit the same one.
        order = [("one at a time", 1), ("batched", args.batch_size)]
        for name, bs in (order if r % 2 == 0 else order[::-1]):
            res = timed(model, tok, prompts, bs, args.max_new_tokens, stop_ids, f"{name} (batch {bs}), run {r + 1}")
            if name not in best or res["seconds"] < best[name]["seconds"]:
                best[name] = res
    one, bat = best["one at a time"], best["batched"]
    same = sum(a == b for a, b in zip(one["answers"], bat["answers"]))
    ratio = bat["tokens_per_s"] / one["tokens_per_s"]
    out = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "repeats": args.repeats,
           "one_at_a_time": {k: v for k, v in one.items() if k != "answers"},
           "batched": {k: v for k, v in bat.items() if k != "answers"},
           "ratio": ratio, "identical_answers": same}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"[bench] generated tokens/s on CPU: one at a time {one['tokens_per_s']:.1f}, batched "
          f"(batch {args.batch_size}) {bat['tokens_per_s']:.1f} -> {ratio:.2f}x (goal >= 3x: "
          f"{'met' if ratio >= 3 else 'NOT met'}); identical answers {same}/{len(prompts)}")
    return out


if __name__ == "__main__":
    main()
