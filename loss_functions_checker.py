"""Part 5 checker: ``loss_functions.compute_loss_from_logits`` against the reference
answers in ``reference_answers.pkl``.

    python loss_functions_checker.py [--reference reference_answers.pkl] [--no_grad]

Each case of the file (made by ``generate_reference_answers.py`` with an independent
float64 formula) gives logits, labels and ``num_items_in_batch``; the checker wraps the
logits in a model-output-like object (``.logits``), as the Trainer does, computes the
loss and, where the file has one, the gradient, and compares them with the reference:
- fp32 logits: ``|got - want| <= 1e-6 + 1e-5 * |want|``;
- bf16/fp16 logits: the inputs are exact in that dtype and the loss is computed in fp32,
  so the loss uses the same tolerance with ``rtol`` 1e-4 (fp32 rounding over fewer
  significant input bits leaves more margin to spare); the gradient is returned in the
  logits' dtype, so it is compared at that dtype's precision (``rtol`` 2**-7 for bf16,
  2**-10 for fp16, ``atol`` 1e-6).
The fp32 gradient uses ``atol`` 1e-7, ``rtol`` 1e-4 per element.

The file is read by an unpickler that accepts no class at all (only dicts, lists,
strings, numbers, booleans and None), so loading it runs no code. Prints one line per
case and ``All checks passed!``; exits 1 on any mismatch, and also (with an error
naming the file) when the file is missing or not a valid reference file.
"""
from __future__ import annotations

import argparse
import io
import math
import pickle
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

# The generator imports only torch and utils, never the code under test.
from generate_reference_answers import FORMAT_VERSION

DEFAULT_REFERENCE = Path(__file__).resolve().parent / "reference_answers.pkl"
LOSS_TOL = {"float32": (1e-6, 1e-5), "bfloat16": (1e-6, 1e-4), "float16": (1e-6, 1e-4)}  # (atol, rtol)
GRAD_TOL = {"float32": (1e-7, 1e-4), "bfloat16": (1e-6, 2.0 ** -7), "float16": (1e-6, 2.0 ** -10)}
CASE_KEYS = ("name", "dtype", "shape", "logits", "labels", "num_items_in_batch", "loss")


class ReferenceError(Exception):
    """The reference file is missing, unreadable or not in the expected layout."""


class _NoClassUnpickler(pickle.Unpickler):
    """Refuses every global: plain containers and scalars need none."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the reference file may hold only plain data")


def load_reference(path: Path) -> list:
    """The list of cases in ``path``; ReferenceError naming the file on any problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ReferenceError(f"{path}: cannot read the reference file ({e.strerror}); "
                             "run `python generate_reference_answers.py` to create it") from e
    try:
        obj = _NoClassUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # truncated or foreign files raise many different errors
        raise ReferenceError(f"{path}: not a valid reference pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format_version") != FORMAT_VERSION or not isinstance(obj.get("cases"), list):
        raise ReferenceError(f"{path}: expected {{'format_version': {FORMAT_VERSION}, 'cases': [...]}}")
    for i, case in enumerate(obj["cases"]):
        missing = [k for k in CASE_KEYS if not isinstance(case, dict) or k not in case]
        if missing:
            raise ReferenceError(f"{path}: case #{i} lacks {', '.join(missing)}")
        if case["dtype"] not in LOSS_TOL:
            raise ReferenceError(f"{path}: case #{i} ({case['name']}) has unknown dtype {case['dtype']!r}")
        shape = case["shape"]
        if (not isinstance(shape, (list, tuple)) or len(shape) != 3
                or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
            raise ReferenceError(f"{path}: case #{i} ({case['name']}) has shape {shape!r}, "
                                 "expected [batch, seq, vocab] of positive ints")
        b, s, v = shape
        if len(case["logits"]) != b * s * v or ("grad" in case and len(case["grad"]) != b * s * v):
            raise ReferenceError(f"{path}: case #{i} ({case['name']}): logits/grad length does not match shape")
    if not obj["cases"]:
        raise ReferenceError(f"{path}: holds no case")
    return obj["cases"]


def check_case(case: dict, with_grad: bool = True) -> tuple[bool, str]:
    """(passed, one-line description) for one reference case."""
    from loss_functions import compute_loss_from_logits

    dtype = getattr(torch, case["dtype"])
    logits = torch.tensor(case["logits"], dtype=torch.float64).reshape(case["shape"]).to(dtype).requires_grad_()
    labels = torch.tensor(case["labels"], dtype=torch.long)
    n = case["num_items_in_batch"]
    if n is not None and case.get("num_items_as_tensor"):
        n = torch.tensor(n)
    loss = compute_loss_from_logits(SimpleNamespace(logits=logits), labels, num_items_in_batch=n)
    got, want = float(loss.detach()), case["loss"]
    atol, rtol = LOSS_TOL[case["dtype"]]
    ok = math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)
    msg = f"loss {got:.8g} vs {want:.8g}"
    if with_grad and "grad" in case:
        loss.backward()
        g = logits.grad
        if g is None or g.dtype != dtype:
            ok = False
            msg += f"; gradient dtype {None if g is None else g.dtype}, expected {dtype}"
        else:
            ref = torch.tensor(case["grad"], dtype=torch.float64).reshape(case["shape"])
            gatol, grtol = GRAD_TOL[case["dtype"]]
            # isclose is False for NaN and for inf against a finite reference.
            grad_ok = bool(torch.isclose(g.double(), ref, rtol=grtol, atol=gatol).all())
            worst = (g.double() - ref).abs().max().item()
            ok &= grad_ok
            msg += f"; grad max |diff| {worst:.2e}{'' if grad_ok else ' (beyond tolerance)'}"
    return ok, msg


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=str(DEFAULT_REFERENCE), help="reference pickle (default: %(default)s)")
    ap.add_argument("--no_grad", action="store_true", help="check loss values only, not gradients")
    args = ap.parse_args(argv)
    try:
        cases = load_reference(Path(args.reference))
    except ReferenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    failed = 0
    for case in cases:
        ok, msg = check_case(case, with_grad=not args.no_grad)
        failed += not ok
        print(f"[{'PASS' if ok else 'FAIL'}] {case['name']:24} {case['dtype']:9} "
              f"valid {case.get('n_valid', '?')}, num_items {case['num_items_in_batch']}: {msg}")
    if failed:
        print(f"{failed} of {len(cases)} checks FAILED")
        return 1
    print("All checks passed!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
