"""Part 6: supervised fine-tuning of a causal LM on chat data with the HF Trainer,
under DeepSpeed ZeRO-2 when launched through ``scripts/sft.sh``.

    deepspeed --num_gpus N train_hw_parallel.py --deepspeed ds_configs/zero2_no_offload.json \\
        --model_name_or_path SmolLM2-135M --data_path smol-smoltalk-6k.json --output_dir ckpt/HW2 ...
    python train_hw_parallel.py --help          # every TrainingArguments flag + the ones below

What it adds to a plain Trainer run:
- data: records normalized by ``chat_format.normalize_conversation`` and masked by Parts 1-4
  (``--mask_mode assistant`` trains assistant turns, ``reverse`` trains user turns: a
  user simulator), cached unpadded (``sft_data``), every drop counted and printed;
- batches padded to their longest sample (multiple of 8) with length-grouped sampling
  (``--train_sampling_strategy group_by_length``, which scripts/sft.sh turns on), or packed without padding when the
  attention can keep samples apart (``--padding_free`` with ``--flash_attn``);
- the token loss as a sum / the token count of the whole accumulated batch (all ranks),
  which the Trainer passes to a custom loss, so gradient accumulation is exact and the
  logged loss is the mean token loss: by default (``--loss fused``) without ever building
  the logits (``fused_loss.FusedLossTrainer``), or (``--loss logits``) Part 5's
  ``compute_loss_from_logits`` on the model's logits through ``compute_loss_func``;
- outputs a report needs: the model in safetensors with a generation config that stops
  at ``<|im_end|>``, the tokenizer with its chat template, ``trainer_state.json``, a loss
  curve PNG and ``run_manifest.json`` (arguments, commit, hashes, masking statistics);
- rerunning the same command resumes from the last checkpoint in ``--output_dir``; the
  run's plan (data hash, model, masking, lengths, batch geometry, optimizer, schedule,
  seeds) is recorded there first (``run_plan.json``), and a rerun with another plan
  stops before training instead of mixing two runs (``run_records.py``).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers
from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

import sft_data
from cpu_precision import PRECISIONS, describe
from fused_loss import FusedLossTrainer
from loss_functions import compute_loss_from_logits
from report import plot_loss_curve
from run_records import check_run_plan, finished_step, run_plan, write_manifest
from fileio import resolve_path
from tokenization import end_of_turn_ids, load_tokenizer, pad_token_id


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="SmolLM2-135M", metadata={"help": "Model folder or hub id."})
    flash_attn: bool = field(
        default=False,
        metadata={"help": "Use flash_attention_2 (needs the flash-attn package, an Ampere+ GPU and bf16/fp16); "
                          "otherwise PyTorch sdpa."},
    )
    loss: str = field(
        default="fused",
        metadata={"help": "fused: output layer + cross-entropy in chunks over the trained positions, never "
                          "building the logits (fused_loss.py); logits: the model's logits through Part 5's "
                          "compute_loss_from_logits. Same loss and gradients.",
                  "choices": ["fused", "logits"]},
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default="smol-smoltalk-6k.json",
        metadata={"help": "A .json/.jsonl file, a folder of them, or a hub dataset id (train split)."},
    )
    conversation_field: str = field(
        default="conversations",
        metadata={"help": "Record field holding the turns; 'conversations' and 'messages' are both tried."},
    )
    max_rounds: int = field(
        default=5,
        metadata={"help": "Keep the first N rounds (a user turn and the turns up to the next one); 0 keeps all."},
    )
    preprocess_workers: int = field(default=1, metadata={"help": "Processes for tokenization and masking."})
    truncation_side: str = field(
        default="right", metadata={"help": "right keeps the start of a long chat, left keeps its end.",
                                   "choices": ["right", "left"]}
    )
    model_max_length: int = field(default=2048, metadata={"help": "Tokens per sample after truncation."})
    mask_mode: str = field(
        default="assistant",
        metadata={"help": "assistant: train assistant turns (Parts 1-2); reverse: train user turns (Parts 3-4).",
                  "choices": ["assistant", "reverse"]},
    )
    padding_free: bool = field(
        default=False,
        metadata={"help": "Pack each batch into one row with position ids, no padding (flash_attention_2 only: "
                          "sdpa/eager would let packed samples attend to each other)."},
    )
    data_cache_dir: Optional[str] = field(
        default=None, metadata={"help": f"Preprocessing cache folder (default {sft_data.DEFAULT_CACHE_DIR})."}
    )
    no_data_cache: bool = field(default=False, metadata={"help": "Preprocess without reading or writing the cache."})


@dataclass
class RunArguments:
    # transformers 5 dropped this TrainingArguments flag; the resume logic here still needs it.
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from scratch even when --output_dir holds checkpoints (default: resume from the last)."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "On the CPU: auto (default) is bf16 mixed precision where the processor has bf16 "
                          "arithmetic (AVX512-BF16, AMX), else fp32 (cpu_precision.py); bf16 or fp32 force one. "
                          "bf16 keeps fp32 master weights and optimizer state. On a GPU: auto leaves --bf16/--fp16 "
                          "as given (scripts/sft.sh picks them), bf16 adds --bf16 True, fp32 refuses them.",
                  "choices": list(PRECISIONS)},
    )


def make_collator(data_args: DataArguments, attn_implementation: str, tokenizer):
    """Pad-to-longest batches, or padding-free packing where the attention supports it."""
    if not data_args.padding_free:
        return sft_data.PadToLongestCollator.for_tokenizer(tokenizer)
    if attn_implementation != "flash_attention_2":
        raise ValueError(
            f"--padding_free needs --flash_attn (attention is {attn_implementation}): packed samples "
            "are kept apart only by flash-attention's variable-length kernels"
        )
    # Library collator: concatenates the batch into one row, restarts position_ids per
    # sample (flash-attention turns them into sequence boundaries) and puts -100 at each
    # sample's first label so no sample is trained to predict the next one's start.
    return transformers.DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)


def precision_argv(argv: list[str], on_gpu: bool) -> tuple[list[str], str, Optional[str]]:
    """(``argv`` with the TrainingArguments that ``--precision`` implies appended, the
    requested precision, a log line or None).

    bf16 becomes ``--bf16 True``: under DeepSpeed its ``bf16`` config section (``"auto"``
    follows the flag) keeps the module in bf16 and fp32 master weights and Adam state in
    the ZeRO optimizer; without DeepSpeed the Trainer runs the forward under bf16 autocast.
    On the CPU ``--use_cpu True`` goes with it (TrainingArguments refuses bf16 without a
    bf16 GPU otherwise; the device stays the CPU either way)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--precision", default="auto", choices=PRECISIONS)
    requested = pre.parse_known_args(argv)[0].precision
    if on_gpu:
        return argv + (["--bf16", "True"] if requested == "bf16" else []), requested, None
    line = describe(requested)
    if line.startswith("bf16"):
        argv = argv + ["--bf16", "True", "--use_cpu", "True"]
    return argv, requested, f"[precision] CPU: {line}"


def training_precision(training_args: TrainingArguments) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: the compute precision the run trains in."""
    return "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"


def restore_fp32_master_weights(trainer: Trainer) -> int:
    """Put DeepSpeed's fp32 master weights back into the model before the final save, so
    a bf16/fp16 run saves the weights it trained (fp32), not their 16-bit copies.

    Under DeepSpeed's bf16/fp16 modes the module holds 16-bit copies; ZeRO-1/2 keep the
    fp32 masters partitioned over the ranks and ``deepspeed.utils.safe_get_full_fp32_param``
    gathers each (a collective: every rank calls it). Returns the number of parameters
    restored (0 without DeepSpeed, or in fp32, where the module already holds them)."""
    if not getattr(trainer, "is_deepspeed_enabled", False) or not (trainer.args.bf16 or trainer.args.fp16):
        return 0
    from deepspeed.utils import safe_get_full_fp32_param

    restored = 0
    for p in trainer.model.parameters():
        full = safe_get_full_fp32_param(p)
        if full is not None:
            p.data = full.detach().reshape(p.shape).to(p.device)
            restored += 1
    return restored


def main(argv: Optional[list[str]] = None) -> Optional[Trainer]:
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments), description=__doc__)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, requested, precision_line = precision_argv(argv, torch.cuda.is_available())
    model_args, data_args, run_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    log = print if training_args.process_index == 0 else (lambda *a, **k: None)
    if requested == "fp32" and training_precision(training_args) != "fp32":
        raise SystemExit(f"[train] error: --precision fp32 contradicts --{training_precision(training_args)} True")
    if precision_line:
        log(precision_line)
    transformers.set_seed(training_args.seed)

    data_hash = sft_data.data_fingerprint(data_args.data_path)  # hashes every data file: once per run
    check_run_plan(training_args.output_dir, run_plan(model_args, data_args, training_args, data_hash),
                   data_args.data_path, run_args.overwrite_output_dir, training_args.resume_from_checkpoint, training_args.should_save, log)
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir) and not run_args.overwrite_output_dir:
        resume = get_last_checkpoint(training_args.output_dir)
    done_at = finished_step(resume, training_args)
    if done_at is not None:
        log(f"[done] {training_args.output_dir} already finished at step {done_at} (checkpoint {resume}); "
            f"nothing to train. Use a new --output_dir or --overwrite_output_dir True to train again.")
        return None

    model_path = resolve_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, data_args.model_max_length)

    # Rank 0 preprocesses and writes the cache while the other ranks wait, then read it.
    with training_args.main_process_first(desc="preprocessing"):
        arrays, stats, key = sft_data.load_or_build(
            data_args.data_path, tokenizer, data_args.model_max_length, data_args.truncation_side,
            data_args.max_rounds, data_args.mask_mode, data_args.conversation_field,
            data_args.preprocess_workers, data_args.data_cache_dir, not data_args.no_data_cache, log=log,
            data_hash=data_hash,
        )
    log(f"[data] {data_args.data_path}: {sft_data.format_stats(stats)}")
    if stats["conversations_kept"] == 0:
        raise SystemExit(f"{data_args.data_path}: no trainable conversation left (see the drop counts above)")
    dataset = sft_data.ConversationDataset(arrays)

    attn = "flash_attention_2" if model_args.flash_attn else "sdpa"
    collator = make_collator(data_args, attn, tokenizer)
    # fp32 master weights; the Trainer/DeepSpeed casts for bf16/fp16 compute.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attn)
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False

    if model_args.loss == "fused":
        trainer_cls, loss_kwargs = FusedLossTrainer, {}
    else:
        trainer_cls, loss_kwargs = Trainer, {"compute_loss_func": compute_loss_from_logits}
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        **loss_kwargs,
    )

    if resume:
        log(f"[train] resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)

    restore_fp32_master_weights(trainer)
    trainer.save_model()  # safetensors + generation_config.json + tokenizer and chat template
    trainer.save_state()
    if trainer.is_world_process_zero():
        out = training_args.output_dir
        write_manifest(os.path.join(out, "run_manifest.json"), model_args, data_args, training_args, stats, key,
                       trainer, resume)
        png = plot_loss_curve(out)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        print(f"[done] {trainer.state.global_step} steps, first/last logged loss "
              f"{losses[0] if losses else float('nan'):.4f}/{losses[-1] if losses else float('nan'):.4f}, "
              f"{result.metrics.get('train_runtime', 0):.0f}s; model, manifest and {os.path.basename(png)} in {out}")
    return trainer


if __name__ == "__main__":
    main()
