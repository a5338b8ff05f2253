"""IFEval generation on the CPU, in one run, on the same prompts: vLLM (the product path,
``smolsft.generation.engines.generate_vllm`` with the engine settings ``run_ifeval.py`` uses) against
transformers' ``generate()`` batched (``smolsft.generation.engines.generate_hf``: sorted by length,
left padding, batch 16), for each workload.

    python benchmarks/generate.py                                # 16 x 64 and 100 x 256 tokens, greedy
    python benchmarks/generate.py --workloads 100x1024 --engines vllm
    python benchmarks/generate.py --workloads 16x64 --vllm_mode compiled
    python benchmarks/generate.py --workloads 100x256 --engines vllm --precisions fp32,bf16   # vLLM bf16 vs fp32
    python benchmarks/generate.py --workloads 100x256 --engines vllm,vllm_mp                   # engine in this process or not

Per engine and workload: startup (vLLM: the engine start, a fresh engine each time, as in
a real run; transformers: loading the model), generation time and generated tokens/s
(the answers' tokens including the stop token, not the padding of finished rows), end
to end (startup + generation), and how many answers are identical between the engines.
Both stop at the same ids (``checkpoint_stop_ids``) and run in each of ``--precisions``
(default fp32 only; bf16 pays off on CPUs with bf16 arithmetic, ``smolsft/hardware/cpu.py``);
with two precisions each engine's bf16 run is also compared with its fp32 run (speed and
identical answers: greedy bf16 answers part from fp32's where rounding flips a near-tie).
Engine ``vllm_mp`` is vLLM with its own process layout (``VLLM_ENABLE_V1_MULTIPROCESSING=1``:
an engine-core process and a worker process), the baseline for ``generate_vllm``'s choice
on machines with few cores (the engine inside the calling process, ``cpu_engine_env``).
The machine's load average is printed before and after: timings on a shared machine are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from smolsft.generation.engines import (
    checkpoint_stop_ids, choose_enforce_eager, generate_hf, generate_vllm, load_hf_model, render_prompts,
)
from ifeval.run_ifeval import DEFAULT_INPUT, load_prompt_set
from smolsft.files import resolve_path
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer


def parse_workload(text: str) -> tuple[int, int]:
    try:
        n, t = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"workload {text!r}: expected PROMPTSxTOKENS, e.g. 100x256") from None
    if n <= 0 or t <= 0:
        raise argparse.ArgumentTypeError(f"workload {text!r}: both numbers must be positive")
    return n, t


DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
ENGINES = ("vllm", "vllm_mp", "hf")
MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
NAMES = {"vllm": "vLLM", "vllm_mp": "vLLM, own processes", "hf": "transformers generate()"}


def run_vllm(path, tok, prompts, max_tokens, stop_ids, enforce_eager, precision="fp32", processes=None):
    """``processes="1"``: vLLM's own engine-core and worker processes; None: the product's choice."""
    t = {}
    saved = os.environ.get(MP_ENV)
    if processes is not None:
        os.environ[MP_ENV] = processes
    try:
        answers = generate_vllm(path, tok, prompts, max_new_tokens=max_tokens, stop_ids=stop_ids,
                                enforce_eager=enforce_eager, timings=t, dtype=DTYPES[precision])
    finally:  # the next engine chooses afresh
        os.environ.pop(MP_ENV, None)
        if saved is not None:
            os.environ[MP_ENV] = saved
    return answers, t["startup_s"], t["generate_s"]


def run_hf(path, tok, prompts, max_tokens, stop_ids, batch_size, precision="fp32"):
    t0 = time.perf_counter()
    model = load_hf_model(path, "cpu", DTYPES[precision])
    t1 = time.perf_counter()
    answers = generate_hf(model, tok, prompts, max_new_tokens=max_tokens, stop_ids=stop_ids, batch_size=batch_size)
    return answers, t1 - t0, time.perf_counter() - t1


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="checkpoint folder (default: the embedded SmolLM2-135M)")
    ap.add_argument("--prompts", default=DEFAULT_INPUT, help="IFEval prompt file; each workload takes its first N")
    ap.add_argument("--workloads", type=lambda s: [parse_workload(w) for w in s.split(",")],
                    default=[(16, 64), (100, 256)], help="comma-separated PROMPTSxTOKENS (default 16x64,100x256)")
    ap.add_argument("--engines", default="vllm,hf", help="comma-separated, from vllm,vllm_mp,hf (default vllm,hf)")
    ap.add_argument("--precisions", default="fp32", help="comma-separated, from fp32,bf16 (default fp32)")
    ap.add_argument("--vllm_mode", choices=["auto", "eager", "compiled"], default="auto",
                    help="as run_ifeval.py's flag (default auto: eager on the CPU)")
    ap.add_argument("--batch_size", type=int, default=16, help="transformers: prompts per batch (default 16)")
    ap.add_argument("--json", help="also write the measurements to this file")
    args = ap.parse_args(argv)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - set(ENGINES):
        ap.error(f"--engines {args.engines!r}: choose from {', '.join(ENGINES)}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - set(DTYPES):
        ap.error(f"--precisions {args.precisions!r}: choose from fp32, bf16")

    path = resolve_path(args.model)
    tok = load_tokenizer(path, padding_side="left")
    stop_ids = checkpoint_stop_ids(tok, path)
    eager = choose_enforce_eager(args.vllm_mode, "cpu")
    load0 = os.getloadavg()
    print(f"[bench] {path}: greedy, {'/'.join(precisions)}, CPU ({len(os.sched_getaffinity(0))} cores), stop ids {stop_ids}, vLLM "
          f"{'eager' if eager else 'compiled'}; load average {load0[0]:.2f}", file=sys.stderr)
    rows, results = [], []
    for n, max_tokens in args.workloads:
        _, records, _ = load_prompt_set(args.prompts, n)
        prompts = render_prompts(tok, records, None)
        got = {}
        for precision in precisions:
            for engine in engines:
                print(f"[bench] {len(prompts)} x {max_tokens}: {engine} {precision}", file=sys.stderr)
                if engine in ("vllm", "vllm_mp"):
                    answers, start, gen = run_vllm(path, tok, prompts, max_tokens, stop_ids, eager, precision,
                                                   processes="1" if engine == "vllm_mp" else None)
                else:
                    answers, start, gen = run_hf(path, tok, prompts, max_tokens, stop_ids, args.batch_size, precision)
                tokens = sum(a["num_tokens"] for a in answers)
                got[engine, precision] = answers
                res = {"prompts": len(prompts), "max_tokens": max_tokens, "engine": engine, "precision": precision,
                       "startup_s": start, "generate_s": gen, "tokens": tokens, "tokens_per_s": tokens / gen,
                       "end_to_end_s": start + gen, "load_average_1min": os.getloadavg()[0]}
                results.append(res)
                # Each result as soon as it exists: a long run stopped early still reports what it measured.
                print(f"[bench] {len(prompts)} x {max_tokens} {engine} {precision}: startup {start:.1f}s, generation "
                      f"{gen:.1f}s, {tokens} tokens, {tokens / gen:.1f} tokens/s, end to end {start + gen:.1f}s, load "
                      f"average {res['load_average_1min']:.2f}", file=sys.stderr, flush=True)
        mine = results[-len(engines) * len(precisions):]
        for res in mine:
            other = got.get(("hf" if res["engine"] == "vllm" else "vllm", res["precision"]))  # vllm_mp: vs vllm
            res["identical_answers"] = (None if other is None else
                                        sum(a == b for a, b in zip(got[res["engine"], res["precision"]], other)))
            if res["precision"] == "bf16" and (res["engine"], "fp32") in got:
                res["identical_to_fp32"] = sum(a == b for a, b in zip(got[res["engine"], "bf16"], got[res["engine"], "fp32"]))
                fp32 = next(r for r in mine if r["engine"] == res["engine"] and r["precision"] == "fp32")
                rows.append(("precision", n, max_tokens, fp32, res, res["identical_to_fp32"]))
        for precision in precisions:
            by = {r["engine"]: r for r in mine if r["precision"] == precision}
            if "vllm" in by and "hf" in by:
                rows.append(("engine", n, max_tokens, by["vllm"], by["hf"], by["vllm"]["identical_answers"]))
            if "vllm" in by and "vllm_mp" in by:
                rows.append(("layout", n, max_tokens, by["vllm"], by["vllm_mp"], by["vllm_mp"]["identical_answers"]))
    print()
    print("| workload | engine | precision | startup s | generation s | tokens | tokens/s | end to end s | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['prompts']} x {r['max_tokens']} | {NAMES[r['engine']]}"
              f" | {r['precision']} | {r['startup_s']:.1f} | {r['generate_s']:.1f} | {r['tokens']} | {r['tokens_per_s']:.1f} | "
              f"{r['end_to_end_s']:.1f} | "
              + (f"{r['identical_answers']}/{r['prompts']}" if r["identical_answers"] is not None else "-") + " |")
    load1 = os.getloadavg()
    print(f"\n[bench] load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end")
    for kind, n, max_tokens, a, b, same in rows:
        if kind == "engine":
            v, h = a, b
            print(f"[bench] {n} x {max_tokens} {v['precision']}: vLLM end to end {h['end_to_end_s'] / v['end_to_end_s']:.2f}x "
                  f"faster than transformers generate() batched ({v['end_to_end_s']:.0f}s vs {h['end_to_end_s']:.0f}s), "
                  f"generation {v['tokens_per_s'] / h['tokens_per_s']:.2f}x the tokens/s; identical answers {same}/{n}")
        elif kind == "layout":
            v, mp = a, b
            print(f"[bench] {n} x {max_tokens} {v['precision']}: vLLM in this process end to end "
                  f"{mp['end_to_end_s'] / v['end_to_end_s']:.2f}x faster than with its own processes "
                  f"({v['end_to_end_s']:.0f}s vs {mp['end_to_end_s']:.0f}s; start {v['startup_s']:.1f}s vs "
                  f"{mp['startup_s']:.1f}s), generation {v['tokens_per_s'] / mp['tokens_per_s']:.2f}x the tokens/s; "
                  f"identical answers {same}/{n}")
        else:
            f, b16 = a, b
            print(f"[bench] {n} x {max_tokens} {f['engine']}: bf16 end to end {f['end_to_end_s'] / b16['end_to_end_s']:.2f}x "
                  f"faster than fp32 ({b16['end_to_end_s']:.0f}s vs {f['end_to_end_s']:.0f}s), generation "
                  f"{b16['tokens_per_s'] / f['tokens_per_s']:.2f}x the tokens/s; {same}/{n} answers identical to fp32's")
    out = {"model": path, "vllm_eager": eager, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
