"""Write ``reference_answers.pkl``: deterministic loss cases with answers computed by an
independent path, for ``loss_functions_checker.py``.

    python generate_reference_answers.py [--out reference_answers.pkl]

The answers come from a direct float64 formula written here in plain Python
(``math.exp``/``math.log``/``math.fsum``), not from ``loss_functions``: for each row
``t`` of each sequence whose next label ``y = labels[b][t + 1]`` is not -100,
``-log softmax(x)[y] = m + log(sum_v exp(x_v - m)) - x_y`` with ``m = max_v x_v``; the
loss is the sum of those over the batch divided by ``num_items_in_batch`` (or by the
number of such rows when it is None; 0 when there are none or the divisor is 0). The
gradient with respect to ``x`` at such a row is ``(softmax(x) - onehot(y)) / divisor``,
zero elsewhere. torch is used only to draw the logits (the worked example of the issue
is ``torch.manual_seed(0); torch.randn(2, 3, 5)``); bf16/fp16 logits are rounded to that
dtype before the answer is computed, so the answer is exact for the stored inputs.

The file holds only dicts, lists, str, int, float, bool and None, so the checker can
read it with an unpickler that refuses every class (no code runs while loading).
Each case: ``name``, ``description``, ``dtype`` ("float32"/"bfloat16"/"float16"),
``shape`` [batch, seq, vocab], ``logits`` (flat row-major list of floats), ``labels``
(nested lists), ``num_items_in_batch`` (int or None), ``num_items_as_tensor`` (bool),
``n_valid`` (shifted targets), ``loss`` (float) and, for small vocabularies, ``grad``
(flat list, same layout as ``logits``).
"""
from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import torch

from utils import IGNORE_TOKEN_ID

FORMAT_VERSION = 1  # also what loss_functions_checker.py expects
DEFAULT_OUT = Path(__file__).resolve().parent / "reference_answers.pkl"


def reference_loss(logits: list, shape: list, labels: list, num_items):
    """(loss, grad as a flat list, number of valid shifted targets), all float64 math."""
    batch, seq, vocab = shape
    rows = []  # (flat offset of the row, target id)
    for b in range(batch):
        for t in range(seq - 1):
            y = labels[b][t + 1]
            if y != IGNORE_TOKEN_ID:
                rows.append(((b * seq + t) * vocab, y))
    divisor = len(rows) if num_items is None else num_items
    grad = [0.0] * len(logits)
    if not rows or divisor == 0:
        return 0.0, grad, len(rows)
    terms = []
    for off, y in rows:
        x = logits[off:off + vocab]
        m = max(x)
        s = math.fsum(math.exp(v - m) for v in x)
        lse = m + math.log(s)
        terms.append(lse - x[y])
        for v in range(vocab):
            grad[off + v] = (math.exp(x[v] - lse) - (1.0 if v == y else 0.0)) / divisor
    return math.fsum(terms) / divisor, grad, len(rows)


def draw(seed: int, shape: tuple, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> list:
    torch.manual_seed(seed)
    return (torch.randn(*shape) * scale).to(dtype).reshape(-1).tolist()


def build_cases() -> list:
    worked = draw(0, (2, 3, 5))  # the example: manual_seed(0); randn(2, 3, 5)
    specs = [
        ("worked_example", "issue example, no ignored label: 4 valid shifted targets, num_items 4",
         "float32", [2, 3, 5], worked, [[0, 2, 4], [1, 3, 0]], 4, False),
        ("worked_example_ignored", "issue example with two labels ignored: 2 valid targets, num_items None",
         "float32", [2, 3, 5], worked, [[0, -100, 4], [1, 3, -100]], None, False),
        ("several_sequences", "4 sequences, ignored labels at the start, middle, end and a fully ignored row",
         "float32", [4, 6, 8], draw(1, (4, 6, 8)),
         [[-100, -100, 3, 1, 7, 0],
          [5, 2, -100, -100, 6, 4],
          [-100, 1, 2, 3, -100, -100],
          [-100, -100, -100, -100, -100, -100]], 8, False),
        ("no_ignored_long_rows", "2 sequences of 9 tokens, every label valid, num_items None",
         "float32", [2, 9, 13], draw(2, (2, 9, 13), 2.0),
         [[(3 * i + b) % 13 for i in range(9)] for b in range(2)], None, False),
        ("bf16_logits", "bf16 logits (values exactly representable), ignored labels, num_items None",
         "bfloat16", [2, 5, 11], draw(3, (2, 5, 11), 3.0, torch.bfloat16),
         [[-100, 4, 10, -100, 0], [-100, -100, 7, 2, 9]], None, False),
        ("fp16_logits", "fp16 logits, num_items given as a tensor",
         "float16", [2, 4, 7], draw(4, (2, 4, 7), 2.0, torch.float16),
         [[-100, 6, 1, 3], [-100, -100, 0, 5]], 4, True),
        ("all_ignored", "every label -100: loss 0, zero gradient, num_items None",
         "float32", [2, 4, 6], draw(5, (2, 4, 6)), [[-100] * 4, [-100] * 4], None, False),
        ("only_first_label", "only each row's first label set: nothing to predict after the shift",
         "float32", [2, 4, 6], draw(6, (2, 4, 6)), [[3] + [-100] * 3, [1] + [-100] * 3], None, False),
        ("zero_count", "valid labels but num_items_in_batch 0: a finite 0",
         "float32", [1, 4, 6], draw(7, (1, 4, 6)), [[0, 1, 2, 3]], 0, False),
        ("accumulation_share", "num_items larger than this batch's count (a gradient-accumulation micro-batch)",
         "float32", [2, 5, 9], draw(8, (2, 5, 9)), [[-100, 1, 8, 2, -100], [-100, -100, 4, 4, 0]], 17, True),
        ("huge_logits", "logits of scale 1e4: the log-sum-exp must not overflow",
         "float32", [2, 4, 10], draw(9, (2, 4, 10), 1e4), [[-100, 2, 9, 5], [-100, 0, -100, 7]], None, False),
        ("long_vocab", "vocabulary 49,152 (SmolLM2's), scale 4, num_items None",
         "float32", [1, 4, 49152], draw(10, (1, 4, 49152), 4.0), [[-100, 17, 49151, 30000]], None, False),
    ]
    cases = []
    for name, desc, dtype, shape, logits, labels, n, as_tensor in specs:
        loss, grad, n_valid = reference_loss(logits, shape, labels, n)
        case = {"name": name, "description": desc, "dtype": dtype, "shape": shape, "logits": logits,
                "labels": labels, "num_items_in_batch": n, "num_items_as_tensor": as_tensor,
                "n_valid": n_valid, "loss": loss}
        if shape[2] <= 64:  # gradients only where they stay small in the file
            case["grad"] = grad
        cases.append(case)
    return cases


def write_reference(path, cases: list) -> None:
    """Write ``cases`` to ``path`` in the layout the checker reads."""
    with open(path, "wb") as f:
        pickle.dump({"format_version": FORMAT_VERSION, "cases": cases}, f, protocol=4)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output pickle (default: %(default)s)")
    args = ap.parse_args(argv)
    cases = build_cases()
    write_reference(args.out, cases)
    for c in cases:
        print(f"{c['name']:24} {c['dtype']:9} shape {c['shape']} valid {c['n_valid']:2} "
              f"num_items {c['num_items_in_batch']} loss {c['loss']:.10g}")
    print(f"wrote {len(cases)} cases to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
