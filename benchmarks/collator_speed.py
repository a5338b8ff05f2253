"""Benchmark: the project's ``sft_data.PadToLongestCollator`` against transformers'
``DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, label_pad_token_id=-100)``,
the library collator that gives the same batches.

    python benchmarks/collator_speed.py [--batches 1000] [--batch_size 8] [--data PATH]

Data: ``data/demo_sft.json`` masked as training does (``sft_data.build_features``),
random batches of ``ConversationDataset`` items (int64 tensors). Both collators get the
same batches, alternating batch by batch so that load from other processes hits both
alike; every pair of outputs is compared. Prints the time per batch of each, the ratio,
and exits 1 if any batch differs. With ``--dataloader_num_workers 0`` (scripts/sft.sh)
collating runs on the training process between steps.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from smolsft.data import sft as sft_data
from smolsft.files import REPO_ROOT
from smolsft.chat.tokenization import DEFAULT_MODEL, load_tokenizer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO_ROOT / "data" / "demo_sft.json"), help="training data (default: %(default)s)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="tokenizer (default: %(default)s)")
    ap.add_argument("--batches", type=int, default=1000, help="batches per collator (default: %(default)s)")
    ap.add_argument("--batch_size", type=int, default=8, help="samples per batch (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from transformers import DataCollatorForSeq2Seq

    tok = load_tokenizer(args.model)
    arrays, stats = sft_data.build_features(args.data, tok, tok.model_max_length, "right", 0, "assistant")
    ds = sft_data.ConversationDataset(arrays)
    rng = random.Random(args.seed)
    batches = [[ds[rng.randrange(len(ds))] for _ in range(args.batch_size)] for _ in range(args.batches)]
    collators = {"ours": sft_data.PadToLongestCollator.for_tokenizer(tok),
                 "DataCollatorForSeq2Seq": DataCollatorForSeq2Seq(tok, pad_to_multiple_of=8, label_pad_token_id=-100)}
    secs = dict.fromkeys(collators, 0.0)
    differ = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for samples in tqdm(batches, desc="collate", unit="batch"):
            out = {}
            for name, collate in collators.items():
                t0 = time.perf_counter()
                out[name] = collate(samples)
                secs[name] += time.perf_counter() - t0
            a, b = out.values()
            differ += set(a) != set(b) or any(a[k].dtype != b[k].dtype or not torch.equal(a[k], b[k]) for k in a)
    for msg in sorted({str(w.message).split(" Please")[0] for w in caught}):
        print(f"warning seen: {msg}")
    ms = {k: 1000 * v / args.batches for k, v in secs.items()}
    print(f"data: {args.data} ({len(ds)} samples); {args.batches} batches of {args.batch_size}: "
          + "; ".join(f"{k} {v:.3f} ms/batch" for k, v in ms.items())
          + f"; library/ours {ms['DataCollatorForSeq2Seq'] / ms['ours']:.1f}x; {differ} batches differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
