"""Part 6: supervised fine-tuning of a causal LM on chat data with the HF Trainer,
under DeepSpeed ZeRO-2 when launched through ``scripts/sft.sh``.

    deepspeed --num_gpus N train_hw_parallel.py --deepspeed ds_configs/zero2_no_offload.json \\
        --model_name_or_path SmolLM2-135M --data_path smol-smoltalk-6k.json --output_dir ckpt/HW2 ...
    torchrun --nproc_per_node N train_hw_parallel.py --model_name_or_path ...   # no DeepSpeed: DDP
    python train_hw_parallel.py --help          # every TrainingArguments flag + the ones below

What it adds to a plain Trainer run:
- data: records normalized by ``chat_format.normalize_conversation`` and masked by Parts 1-4
  (``--mask_mode assistant`` trains assistant turns, ``reverse`` trains user turns: a
  user simulator; ``--train_turns last`` trains only the last such turn, a message's own
  ``"train"`` flag overrides either), cached unpadded (``sft_data``), every drop counted and printed;
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
  stops before training instead of mixing two runs (``smolsft/train/records.py``); a
  folder whose run stopped before its first step simply starts again;
- SIGTERM, SIGUSR1 or ``$SFT_STOP_FILE`` end the run after its optimizer step with a checkpoint
  and exit status 75, no final export: the rerun resumes (``smolsft/train/preemption.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

import torch
import transformers
from transformers import AutoModelForCausalLM, HfArgumentParser, Trainer, TrainingArguments

from smolsft.kernels import cpu_attention as cpu_attention
from smolsft.data import sft as sft_data
from smolsft.hardware.cpu import ATTENTIONS, PRECISIONS, describe
from smolsft.hardware.rules import largest_batch_at_most, precision_name, training_attention
from smolsft.losses.fused import FusedLossTrainer
from loss_functions import compute_loss_from_logits
from smolsft.report.reports import plot_loss_curve
from smolsft.kernels.rms_norm import fuse_rms_norms
from smolsft.chat.format import TRAIN_TURNS
from smolsft.lock import FolderLock, FolderLockedError
from smolsft.train.hf_trainer import (ScheduleOnResume, TargetRecorder, remove_shm_allreduce_buffer,
                                      restore_fp32_master_weights, with_tied_save)
from smolsft.train.records import (check_run_plan, same_plan_on_every_rank, checkpoint_problems, deepspeed_owns_scheduler, export_complete, export_from_checkpoint,
                         finished_step, resumable_checkpoint, run_plan, write_manifest)
from smolsft.train.settings import SettingsError, check_settings
from smolsft.train.preemption import PREEMPTED_EXIT_CODE, PreemptionCallback
from smolsft.files import resolve_path
from smolsft.chat.tokenization import end_of_turn_ids, load_tokenizer, pad_token_id


@dataclass
class ModelArguments:
    model_name_or_path: str = field(default="SmolLM2-135M", metadata={"help": "Model folder or hub id."})
    flash_attn: bool = field(
        default=False,
        metadata={"help": "Use flash_attention_2 (needs the flash-attn package, an Ampere+ GPU and bf16/fp16); "
                          "otherwise PyTorch sdpa, or cpu_bmm (see --cpu_attention)."},
    )
    cpu_attention: str = field(
        default="auto",
        metadata={"help": "Attention without --flash_attn: auto (default) is cpu_bmm for fp32 and bf16 training on the CPU "
                          "(smolsft/kernels/cpu_attention.py: causal blocks of matrix products over the real tokens, faster than "
                          "PyTorch's CPU flash kernel in fp32 and bf16; sdpa takes over for other masks and large "
                          "batches) and sdpa elsewhere; sdpa or cpu_bmm force one (cpu_bmm only on the CPU).",
                  "choices": list(ATTENTIONS)},
    )
    loss: str = field(
        default="fused",
        metadata={"help": "fused: output layer + cross-entropy in chunks over the trained positions, never "
                          "building the logits (smolsft/losses/fused.py); logits: the model's logits through Part 5's "
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
    train_turns: str = field(
        default="all",
        metadata={"help": "all: every turn of the trained role; last: only the last one (a sample whose last turn "
                          "truncation cuts away is dropped and counted). A message's own \"train\": true|false "
                          "overrides either.",
                  "choices": list(TRAIN_TURNS)},
    )
    simulator_end_marker: bool = field(
        default=False,
        metadata={"help": "reverse mode: after a conversation's last assistant turn, train a user turn that is the "
                          "end marker (smolsft/simulator/intent.py END_MARKER), so the simulator learns to end."},
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
                          "arithmetic (AVX512-BF16, AMX), else fp32 (smolsft/hardware/cpu.py); bf16 or fp32 force one. "
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


@contextlib.contextmanager
def deepspeed_blocked(block: bool):
    """Within the block, ``import deepspeed`` raises ImportError and transformers and
    accelerate see DeepSpeed as not installed (``sys.modules["deepspeed"] = None``, which
    ``importlib.util.find_spec`` reports as absent).

    Why: a run without ``--deepspeed`` (torchrun / DDP, one process) needs nothing from
    DeepSpeed, but accelerate's ``unwrap_model`` imports it whenever the package is
    installed, so a release that fails to import (no CUDA toolkit, deepspeed issue #7452)
    would stop a run that never asked for it. Nothing is blocked when ``block`` is False or
    deepspeed is already imported; the entry is removed again on exit.
    """
    if not block or "deepspeed" in sys.modules:
        yield
        return
    sys.modules["deepspeed"] = None
    try:
        yield
    finally:
        if "deepspeed" in sys.modules and sys.modules["deepspeed"] is None:
            del sys.modules["deepspeed"]


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
    return precision_name(training_args.bf16, training_args.fp16)


def main(argv: Optional[list[str]] = None) -> Optional[Trainer]:
    parser = HfArgumentParser((ModelArguments, DataArguments, RunArguments, TrainingArguments), description=__doc__)
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, requested, precision_line = precision_argv(argv, torch.cuda.is_available())
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise SystemExit(f"[train] error: unknown argument(s) {' '.join(unknown)} "
                         f"(python train_hw_parallel.py --help lists every flag)")
    model_args, data_args, run_args, training_args = parsed
    with deepspeed_blocked(not training_args.deepspeed):
        check_settings({"learning_rate": training_args.learning_rate, "num_train_epochs": training_args.num_train_epochs,
                        "max_steps": training_args.max_steps, "warmup_steps": training_args.warmup_steps,
                        "model_max_length": data_args.model_max_length, "max_rounds": data_args.max_rounds},
                       what="training arguments")
        writer = training_args.process_index == 0
        log = print if writer else (lambda *a, **k: None)
        if data_args.simulator_end_marker and data_args.mask_mode != "reverse":
            raise SystemExit("[train] error: --simulator_end_marker trains a user turn: it needs --mask_mode reverse")
        if requested == "fp32" and training_precision(training_args) != "fp32":
            raise SystemExit(f"[train] error: --precision fp32 contradicts --{training_precision(training_args)} True")
        if precision_line:
            log(precision_line)
        if not model_args.flash_attn:
            try:
                model_args.cpu_attention, why = training_attention(
                    model_args.cpu_attention, training_args.device.type, training_precision(training_args))
            except ValueError as e:
                raise SystemExit(f"[train] error: {e}")
            log(f"[attention] {model_args.cpu_attention} ({why})")
        # One writer per output folder: rank 0 holds the lock for the whole run (the other
        # ranks write only their own shards, inside checkpoints rank 0 names).
        lock = FolderLock(training_args.output_dir, "training output folder", log) if writer else contextlib.nullcontext()
        try:
            with lock:
                return _train(model_args, data_args, run_args, training_args, writer, log)
        except torch.OutOfMemoryError:
            log(out_of_memory_advice(training_args, data_args.model_max_length, model_args.loss))
            raise
        finally:
            if training_args.deepspeed and not torch.cuda.is_available():
                remove_shm_allreduce_buffer()


def out_of_memory_advice(training_args: TrainingArguments, maxlen: int, loss: str) -> str:
    """One line after an out-of-memory error: the BSZPERDEV to try that keeps TOTALBSZ
    (smolsft.hardware.rules.largest_batch_at_most), or what else lowers memory."""
    bsz, ga, world = (training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps,
                      training_args.world_size)
    total = bsz * ga * world
    smaller = largest_batch_at_most(bsz - 1, total, world) if bsz > 1 else None
    if smaller:
        return (f"[train] error: out of GPU memory at BSZPERDEV={bsz} (MAXLEN {maxlen}, --loss {loss}): try "
                f"BSZPERDEV={smaller} (gradient accumulation becomes {total // world // smaller}, TOTALBSZ stays {total})")
    return (f"[train] error: out of GPU memory at BSZPERDEV={bsz}, the smallest: lower MAXLEN ({maxlen}), "
            f"pass --gradient_checkpointing True, or use scripts/sft_offload.sh")


def _train(model_args, data_args, run_args, training_args, writer: bool, log) -> Optional[Trainer]:
    """The recipe: where to start (plan check, resume) -> data -> model -> trainer -> train -> save."""
    transformers.set_seed(training_args.seed)
    data_hash = sft_data.data_fingerprint(data_args.data_path)  # hashes every data file: once per run
    resume, done_at = _starting_point(model_args, data_args, run_args, training_args, data_hash, writer, log)
    if done_at is not None and (resume is None or export_complete(training_args.output_dir, done_at)):
        log(f"[done] {training_args.output_dir} already finished at step {done_at} (checkpoint {resume}); "
            f"nothing to train. Use a new --output_dir or --overwrite_output_dir True to train again.")
        return None
    model_path = resolve_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_path, data_args.model_max_length)
    arrays, stats, key = _training_data(data_args, training_args, tokenizer, data_hash, log)
    if done_at is not None:
        if writer:
            _export_finished_run(model_args, data_args, training_args, stats, key, resume, done_at)
        return None
    preempt = PreemptionCallback(log=log)  # SIGTERM/SIGUSR1/$SFT_STOP_FILE: checkpoint, exit 75
    trainer = _make_trainer(model_args, data_args, training_args, model_path, tokenizer,
                            sft_data.ConversationDataset(arrays), preempt, log)
    if resume:
        log(f"[train] resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    if preempt.stopped_at is not None:  # no final export: the rerun resumes from the checkpoint
        raise SystemExit(PREEMPTED_EXIT_CODE)
    _save_run(trainer, result, model_args, data_args, training_args, stats, key, resume)
    return trainer


def _starting_point(model_args, data_args, run_args, training_args, data_hash: str, writer: bool,
                    log) -> tuple[Optional[str], Optional[int]]:
    """(the checkpoint to resume from or None, the step at which the run is already finished
    or None), after refusing a folder that holds another run's plan. Incomplete checkpoints
    are set aside by the writer; a ``--resume_from_checkpoint`` that is incomplete stops."""
    out = training_args.output_dir
    plan = run_plan(model_args, data_args, training_args, data_hash)
    same_plan_on_every_rank(plan, out)  # a node started with other settings stops here, named
    check_run_plan(out, plan,
                   data_args.data_path, run_args.overwrite_output_dir, training_args.resume_from_checkpoint,
                   training_args.should_save, log)
    deepspeed = bool(training_args.deepspeed)
    ds_config = getattr(training_args, "hf_deepspeed_config", None)
    ds_scheduler = ds_config is not None and deepspeed_owns_scheduler(ds_config.config)
    resume = training_args.resume_from_checkpoint
    if resume is not None:
        problems = checkpoint_problems(resume, training_args.world_size, deepspeed, training_args.save_only_model,
                                       ds_scheduler)
        if problems:
            raise SystemExit(f"[train] error: --resume_from_checkpoint {resume} is incomplete: {'; '.join(problems)}")
    elif not run_args.overwrite_output_dir:
        resume = resumable_checkpoint(out, training_args.world_size, deepspeed, training_args.save_only_model,
                                      writer=writer, log=log, deepspeed_scheduler=ds_scheduler)
    done_at = None if run_args.overwrite_output_dir else finished_step(resume, training_args)
    return resume, done_at


def _training_data(data_args, training_args, tokenizer, data_hash: str, log):
    """(feature arrays, drop/truncation statistics, cache key) of the training set. Rank 0
    preprocesses and writes the cache while the other ranks wait, then they read it.
    Stops when no conversation is left to train."""
    with training_args.main_process_first(desc="preprocessing"):
        arrays, stats, key = sft_data.load_or_build(
            data_args.data_path, tokenizer, data_args.model_max_length, data_args.truncation_side,
            data_args.max_rounds, data_args.mask_mode, data_args.conversation_field,
            data_args.preprocess_workers, data_args.data_cache_dir, not data_args.no_data_cache, log=log,
            data_hash=data_hash, train_turns=data_args.train_turns, end_marker=data_args.simulator_end_marker,
        )
    log(f"[data] {data_args.data_path}: {sft_data.format_stats(stats)}")
    if stats["conversations_kept"] == 0:
        raise SystemExit(f"{data_args.data_path}: no trainable conversation left (see the drop counts above)")
    return arrays, stats, key


def _export_finished_run(model_args, data_args, training_args, stats, key, resume: str, done_at: int) -> None:
    """A run that finished at its last checkpoint but was killed while writing the final
    export: write the export from that checkpoint; no optimizer step runs again."""
    out = training_args.output_dir
    copied = export_from_checkpoint(resume, out)
    write_manifest(os.path.join(out, "run_manifest.json"), model_args, data_args, training_args, stats, key,
                   done_at, resume, exported_from=resume)
    png = plot_loss_curve(out)
    print(f"[done] {out} had finished at step {done_at} but its final export was missing or incomplete: "
          f"wrote it from {os.path.basename(resume)} without training ({len(copied)} files, manifest, "
          f"{os.path.basename(png)})")


def _load_model(model_args, training_args, model_path: str, tokenizer, attn: str, log):
    """The model in fp32 (master weights; the Trainer or DeepSpeed casts for bf16/fp16
    compute), with the CPU's fused RMSNorm and the chat's end-of-turn ids for generation."""
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attn)
    if training_args.device.type == "cpu":  # faster on the CPU only (smolsft/kernels/rms_norm.py)
        switched = fuse_rms_norms(model)
        log(f"[model] {switched} RMSNorm modules run PyTorch's fused rms_norm kernel")
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False
    return model


def _make_trainer(model_args, data_args, training_args, model_path: str, tokenizer, dataset, preempt,
                  log) -> Trainer:
    """The Trainer of ``--loss``: ``fused`` (this library's loss from the hidden states;
    with ``cpu_bmm`` each batch runs without its padding) or ``logits`` (Part 5's
    ``compute_loss_from_logits`` on the model's logits)."""
    attn = "flash_attention_2" if model_args.flash_attn else model_args.cpu_attention  # resolved in main()
    if attn == cpu_attention.NAME:
        cpu_attention.register()
    model = _load_model(model_args, training_args, model_path, tokenizer, attn, log)
    if model_args.loss == "fused":
        pack = attn == cpu_attention.NAME  # cpu_bmm keeps packed samples apart
        trainer_cls, loss_kwargs = FusedLossTrainer, {"pack_batches": pack}
        if pack:
            log("[batches] each right-padded batch trains as one row of its real tokens (no padding computed)")
    else:
        trainer_cls, loss_kwargs = Trainer, {"compute_loss_func": compute_loss_from_logits}
    return with_tied_save(trainer_cls)(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=make_collator(data_args, attn, tokenizer),
        processing_class=tokenizer,
        callbacks=[TargetRecorder({"max_steps": training_args.max_steps,
                                   "num_train_epochs": training_args.num_train_epochs}), ScheduleOnResume(log),
                   preempt],
        **loss_kwargs,
    )


def _save_run(trainer: Trainer, result, model_args, data_args, training_args, stats, key,
              resume: Optional[str]) -> None:
    """The final export (fp32 weights, tokenizer, chat template, trainer state); rank 0
    also writes the run manifest and the loss curve and prints the summary line."""
    out = training_args.output_dir
    restore_fp32_master_weights(trainer)
    trainer.save_model()  # safetensors + generation_config.json + tokenizer and chat template
    trainer.save_state()
    if not trainer.is_world_process_zero():
        return
    write_manifest(os.path.join(out, "run_manifest.json"), model_args, data_args, training_args, stats, key,
                   trainer.state.global_step, resume)
    png = plot_loss_curve(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    logged = (f"first/last logged loss {losses[0]:.4f}/{losses[-1]:.4f}" if losses else
              f"no loss logged (--logging_steps {training_args.logging_steps:g}), mean {result.training_loss:.4f}")
    print(f"[done] {trainer.state.global_step} steps, {logged}, "
          f"{result.metrics.get('train_runtime', 0):.0f}s; model, manifest and {os.path.basename(png)} in {out}")


def cli(argv: Optional[list[str]] = None) -> None:
    """``main`` with bad input (data, settings, a locked folder) as one line
    ``[train] error: ...`` (exit status 1) instead of a traceback on every rank."""
    try:
        main(argv)
    except (sft_data.DataFormatError, SettingsError, FolderLockedError) as e:
        raise SystemExit(f"[train] error: {e}") from None


if __name__ == "__main__":
    cli()
