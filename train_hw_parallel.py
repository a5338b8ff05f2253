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
  stops before training instead of mixing two runs (``smolsft/train/records.py``).
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
from smolsft.hardware.cpu import ATTENTIONS, PRECISIONS, describe, training_attention
from smolsft.losses.fused import FusedLossTrainer
from loss_functions import compute_loss_from_logits
from smolsft.report.reports import plot_loss_curve
from smolsft.kernels.rms_norm import fuse_rms_norms
from smolsft.chat.format import TRAIN_TURNS
from smolsft.lock import FolderLock, FolderLockedError
from smolsft.train.records import (RUN_TARGET_KEY, check_run_plan, checkpoint_problems, deepspeed_owns_scheduler, export_complete, export_from_checkpoint,
                         finished_step, resumable_checkpoint, run_plan, write_manifest)
from smolsft.train.settings import SettingsError, check_settings
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


class TargetRecorder(transformers.TrainerCallback):
    """Records in every checkpoint's trainer_state.json (``stateful_callbacks``, written
    with the rest of the state, last) the ``--max_steps`` and ``--num_train_epochs`` the
    run was started with, so that a rerun can tell from the checkpoint alone whether
    the run it continues was finished (``run_records.finished_step``)."""

    def __init__(self, target: dict):
        self.target = target

    def on_train_begin(self, args, state, control, **kwargs):
        state.stateful_callbacks[RUN_TARGET_KEY] = dict(self.target)


class ScheduleOnResume(transformers.TrainerCallback):
    """After a resume, sets each optimizer group's learning rate to this run's schedule
    at the resumed step.

    Why: the optimizer state restored from a checkpoint holds the learning rate the old
    schedule gave its last step, and the Trainer steps the scheduler only after each
    optimizer step; a run extended from ``--max_steps 6`` to 10 under cosine would
    run step 7 at the old schedule's end (0) before following the new one. The Trainer's
    schedulers are ``LambdaLR`` (lr = base_lr x lambda(step)), whose lambdas are rebuilt
    for this run's total while ``last_epoch`` comes from the checkpoint; other
    schedulers are left alone. For an interrupted run resumed with the same settings the
    value set is the one restored (a no-op)."""

    def __init__(self, log=print):
        self.log = log

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        lr_scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate's wrapper
        if state.global_step == 0 or optimizer is None or not isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            return
        step = lr_scheduler.last_epoch
        new = [base * fn(step) for base, fn in zip(lr_scheduler.base_lrs, lr_scheduler.lr_lambdas)]
        old = [g["lr"] for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, new):
            g["lr"] = lr
        lr_scheduler._last_lr = list(new)
        if any(abs(a - b) > 1e-12 * max(abs(a), abs(b), 1e-30) for a, b in zip(old, new)):
            self.log(f"[train] resumed at step {state.global_step} on the schedule for {state.max_steps} steps: "
                     f"learning rate {new[0]:.4g} (the checkpoint's optimizer held {old[0]:.4g}, its own schedule's)")


def tie_saved_weights(model, state_dict: Optional[dict]) -> Optional[dict]:
    """``state_dict`` without the weights the model ties to another one (``lm_head.weight``
    to the input embedding when ``tie_word_embeddings``), as ``save_pretrained`` writes a
    tied model; ``None`` stays ``None``.

    Why: under DeepSpeed the Trainer saves the state dict accelerate's ``get_state_dict``
    returns, whose tensors are clones; ``save_pretrained`` finds tied weights by shared
    storage, so it saw two tensors and stored both (SmolLM2-135M in fp32: 113 MB more per
    checkpoint). A tie is taken from the live model (the two parameters are one object),
    never from the config alone."""
    if state_dict is None:
        return None
    unwrapped = getattr(model, "module", model)
    tied = getattr(unwrapped, "get_expanded_tied_weights_keys", lambda **kw: {})(all_submodels=True) or {}
    params = dict(unwrapped.named_parameters(remove_duplicate=False))
    drop = [target for target, source in tied.items()
            if target in state_dict and source in state_dict and target in params and source in params
            and params[target] is params[source]]
    return {k: v for k, v in state_dict.items() if k not in drop} if drop else state_dict


def with_tied_save(trainer_cls):
    """``trainer_cls`` whose model saves store tied weights once (:func:`tie_saved_weights`)."""
    class TiedSaveTrainer(trainer_cls):
        def _save(self, output_dir=None, state_dict=None):
            return super()._save(output_dir, state_dict=tie_saved_weights(self.model, state_dict))

    TiedSaveTrainer.__name__ = trainer_cls.__name__
    return TiedSaveTrainer


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
        finally:
            if training_args.deepspeed and not torch.cuda.is_available():
                remove_shm_allreduce_buffer()


def remove_shm_allreduce_buffer(environ: Optional[dict] = None, shm_dir: str = "/dev/shm") -> Optional[str]:
    """Unlink this rank's DeepSpeed CPU all-reduce buffer, if there is one; returns its path.

    DeepSpeed's CPU accelerator (0.19.8, ``ops/csrc/cpu/comm/shm.cpp``) gives every rank a
    shared-memory file ``deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{RANK}``
    (66 MB) and never unlinks it, so each CPU run left 66 MB per rank in RAM until reboot.
    Called when the rank is done: the other ranks mapped it at start, and an unlinked
    file stays mapped until they exit."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in ("MASTER_ADDR", "MASTER_PORT", "RANK")):
        return None
    path = os.path.join(shm_dir, f"deepspeed_allreduce_buffer_{os.getuid()}_{env['MASTER_ADDR']}_"
                                 f"{env['MASTER_PORT']}_{env['RANK']}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    return path


def _train(model_args, data_args, run_args, training_args, writer: bool, log) -> Optional[Trainer]:
    transformers.set_seed(training_args.seed)
    out = training_args.output_dir
    data_hash = sft_data.data_fingerprint(data_args.data_path)  # hashes every data file: once per run
    check_run_plan(out, run_plan(model_args, data_args, training_args, data_hash),
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
    if done_at is not None and (resume is None or export_complete(out, done_at)):
        log(f"[done] {out} already finished at step {done_at} (checkpoint {resume}); "
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
            data_hash=data_hash, train_turns=data_args.train_turns, end_marker=data_args.simulator_end_marker,
        )
    log(f"[data] {data_args.data_path}: {sft_data.format_stats(stats)}")
    if stats["conversations_kept"] == 0:
        raise SystemExit(f"{data_args.data_path}: no trainable conversation left (see the drop counts above)")

    if done_at is not None:
        # Finished at its last checkpoint, but killed while writing the final export:
        # write the export from that checkpoint; no optimizer step is run again.
        if writer:
            copied = export_from_checkpoint(resume, out)
            write_manifest(os.path.join(out, "run_manifest.json"), model_args, data_args, training_args, stats, key,
                           done_at, resume, exported_from=resume)
            png = plot_loss_curve(out)
            print(f"[done] {out} had finished at step {done_at} but its final export was missing or incomplete: "
                  f"wrote it from {os.path.basename(resume)} without training ({len(copied)} files, manifest, "
                  f"{os.path.basename(png)})")
        return None
    dataset = sft_data.ConversationDataset(arrays)

    attn = "flash_attention_2" if model_args.flash_attn else model_args.cpu_attention  # resolved in main()
    if attn == cpu_attention.NAME:
        cpu_attention.register()
    collator = make_collator(data_args, attn, tokenizer)
    # fp32 master weights; the Trainer/DeepSpeed casts for bf16/fp16 compute.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation=attn)
    if training_args.device.type == "cpu":  # measured on the CPU only (smolsft/kernels/rms_norm.py)
        switched = fuse_rms_norms(model)
        log(f"[model] {switched} RMSNorm modules run PyTorch's fused rms_norm kernel")
    model.generation_config.eos_token_id = end_of_turn_ids(tokenizer)
    model.generation_config.pad_token_id = pad_token_id(tokenizer)
    if training_args.gradient_checkpointing:
        model.config.use_cache = False

    if model_args.loss == "fused":
        # cpu_bmm keeps packed samples apart and skips what is not computed: no layer sees padding.
        pack = attn == cpu_attention.NAME
        trainer_cls, loss_kwargs = FusedLossTrainer, {"pack_batches": pack}
        if pack:
            log("[batches] each right-padded batch trains as one row of its real tokens (no padding computed)")
    else:
        trainer_cls, loss_kwargs = Trainer, {"compute_loss_func": compute_loss_from_logits}
    trainer = with_tied_save(trainer_cls)(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[TargetRecorder({"max_steps": training_args.max_steps,
                                   "num_train_epochs": training_args.num_train_epochs}), ScheduleOnResume(log)],
        **loss_kwargs,
    )

    if resume:
        log(f"[train] resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)

    restore_fp32_master_weights(trainer)
    trainer.save_model()  # safetensors + generation_config.json + tokenizer and chat template
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_manifest(os.path.join(out, "run_manifest.json"), model_args, data_args, training_args, stats, key,
                       trainer.state.global_step, resume)
        png = plot_loss_curve(out)
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        logged = (f"first/last logged loss {losses[0]:.4f}/{losses[-1]:.4f}" if losses else
                  f"no loss logged (--logging_steps {training_args.logging_steps:g}), mean {result.training_loss:.4f}")
        print(f"[done] {trainer.state.global_step} steps, {logged}, "
              f"{result.metrics.get('train_runtime', 0):.0f}s; model, manifest and {os.path.basename(png)} in {out}")
    return trainer


def cli(argv: Optional[list[str]] = None) -> None:
    """``main`` with bad input (data, settings, a locked folder) as one line
    ``[train] error: ...`` (exit status 1) instead of a traceback on every rank."""
    try:
        main(argv)
    except (sft_data.DataFormatError, SettingsError, FolderLockedError) as e:
        raise SystemExit(f"[train] error: {e}") from None


if __name__ == "__main__":
    cli()
