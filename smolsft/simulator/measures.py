"""Measures of a user simulator (a model trained with ``--mask_mode reverse``), base vs
simulator, on held-out conversations (``scripts/simulator_eval.py`` runs them; formats and
sources as in UserLM, arXiv 2510.06552, and instruction back-translation, Li et al. 2023):

- :func:`heldout_split`: the fixed held-out split of a chat file, chosen by a hash of each
  record's id (the same records for every run, whatever the order of the file);
- :func:`user_turn_loss`: the mean token loss (nats) on the user turns of conversations,
  masked as the simulator is trained (``reverse_conversation_func``) and computed by the
  project's training loss (``fused_loss``); perplexity = exp(loss);
- :func:`chrf`: back-translation fidelity, sacrebleu's corpus chrF (0-100) of generated
  requests against the real ones;
- :func:`role_scores` / :func:`reads_as_assistant`: role confusion. A text ``x`` *reads
  as an assistant answer* when a judge model finds it more likely as the assistant's turn
  than as the user's:
  ``log p(x <|im_end|> | h, <|im_start|>assistant\\n) > log p(x <|im_end|> | h, <|im_start|>user\\n)``,
  with the same ``h`` for both roles (by default no history, only a newline), so only the
  text decides. It is validated on real turns first (:func:`real_turn_items`): real user
  turns must rarely, real answers mostly, read as answers;
- :func:`distinct_n` and :func:`repeats_previous`: diversity of generated user turns.

Torch and the model are needed only by the loss and role functions; the rest is
standard library plus sacrebleu.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Iterable, Optional, Sequence

from smolsft.chat.format import IM_END, IM_START, is_single_turn_conversation

WORD_RE = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- split
def heldout_split(records: Sequence[dict], n_heldout: int, salt: str = "simulator-heldout") -> tuple[list[int], list[int]]:
    """``(train_indices, heldout_indices)``: the ``n_heldout`` records with the smallest
    sha256 of ``salt + id`` (the record's ``"id"``, else its index) are held out, so the
    split depends on the records' ids only. Raises ``ValueError`` for duplicate ids or
    ``n_heldout`` outside ``[1, len(records) - 1]``."""
    ids = [str(r.get("id", i)) if isinstance(r, dict) else str(i) for i, r in enumerate(records)]
    if len(set(ids)) != len(ids):
        raise ValueError("records have duplicate ids: the held-out split needs unique ones")
    if not 1 <= n_heldout < len(records):
        raise ValueError(f"n_heldout must be in [1, {len(records) - 1}], got {n_heldout}")
    order = sorted(range(len(ids)), key=lambda i: hashlib.sha256((salt + ids[i]).encode()).hexdigest())
    held = sorted(order[:n_heldout])
    held_set = set(held)
    return [i for i in range(len(ids)) if i not in held_set], held


# ------------------------------------------------------------------------ scoring
def _batches(items: list, size: int) -> Iterable[list]:
    for s in range(0, len(items), size):
        yield items[s:s + size]


def _forward_sums(model, rows: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8,
                  progress: Optional[str] = None) -> list[tuple[float, int]]:
    """Per row ``(sum of token losses in nats, number of targets)``: each row is
    ``(input_ids, labels)`` (labels -100 where not scored, aligned with the ids, the loss
    shifting them as in training). The sum is the training loss
    (``fused_loss.fused_linear_cross_entropy``, equal to ``loss_functions.cross_entropy_loss``
    on the logits) with ``num_items_in_batch=1``, on the model's last hidden states: the
    ``[batch, seq, vocab]`` logits are never built."""
    import torch
    from tqdm import tqdm

    from smolsft.chat.format import IGNORE_TOKEN_ID
    from smolsft.losses.fused import fused_linear_cross_entropy, output_weight

    device = next(model.parameters()).device
    weight = output_weight(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths batch together
    out: list = [None] * len(rows)
    bar = tqdm(total=len(rows), desc=progress or "scoring", unit="seq", disable=progress is None, mininterval=2)
    for idx in _batches(order, batch_size):
        width = max(len(rows[i][0]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        labels = torch.full((len(idx), width), IGNORE_TOKEN_ID, dtype=torch.long)
        attn = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            n = len(rows[i][0])
            ids[r, :n] = torch.tensor(rows[i][0])
            labels[r, :n] = torch.tensor(rows[i][1])
            attn[r, :n] = 1
        with torch.inference_mode():
            hidden = model(input_ids=ids.to(device), attention_mask=attn.to(device), output_hidden_states=True,
                           logits_to_keep=torch.zeros(0, dtype=torch.long, device=device)).hidden_states[-1]
            for r, i in enumerate(idx):
                lab = labels[r:r + 1].to(device)
                count = int((lab[:, 1:] != IGNORE_TOKEN_ID).sum())
                out[i] = (float(fused_linear_cross_entropy(hidden[r:r + 1], weight, lab, num_items_in_batch=1)), count)
        bar.update(len(idx))
    bar.close()
    return out


def user_turn_loss(model, tokenizer, conversations: list[list[dict]], max_length: int = 2048, batch_size: int = 8,
                   progress: Optional[str] = None, intents: Optional[Sequence[Optional[str]]] = None,
                   end_marker: bool = False) -> dict:
    """Mean token loss on the user turns of ``conversations`` (normalized messages),
    masked as the simulator is trained (``sft_data.unpadded_features`` with
    ``mask_mode="reverse"``, right truncation to ``max_length``; ``intents``, one per
    conversation or ``None``, and ``end_marker`` as the simulator's training used them).
    Returns ``{"loss" (nats per token), "perplexity", "tokens", "conversations"}``; a
    conversation with no scored token left is skipped (not counted)."""
    from smolsft.data.sft import unpadded_features

    rows = []
    for k, msgs in enumerate(conversations):
        f = unpadded_features(msgs, tokenizer, max_length, "right", "reverse",
                              intent=intents[k] if intents else None, end_marker=end_marker)
        if f is not None:
            rows.append((f["input_ids"].tolist(), f["labels"].tolist()))
    sums = _forward_sums(model, rows, tokenizer.pad_token_id or 0, batch_size, progress)
    total, count = sum(s for s, _ in sums), sum(n for _, n in sums)
    loss = total / count if count else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if count else float("nan"), "tokens": count,
            "conversations": sum(1 for _, n in sums if n > 0)}


def chatml_turns(messages: Sequence[dict]) -> str:
    """``messages`` as the project's ChatML turns, ``<|im_start|>{role}\\n{content}<|im_end|>\\n``
    each (``chat_format.CHATML_TEMPLATE`` without its leading newline)."""
    return "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)


def framed_role_scores(model, tokenizer, items: list[tuple[list[dict], str]], before, batch_size: int = 8,
                       progress: Optional[str] = None) -> list[float]:
    """For each ``(history, text)``: ``log p(text <|im_end|> | before(history), assistant header)
    - log p(text <|im_end|> | before(history), user header)`` in nats; ``before`` maps the
    history to the text that precedes the role header (the framing; benchmarks/role_judge.py
    compares several)."""
    rows = []
    for history, text in items:
        target = tokenizer(text + IM_END, add_special_tokens=False)["input_ids"]
        for role in ("assistant", "user"):
            prefix = tokenizer(before(history) + IM_START + role + "\n", add_special_tokens=False)["input_ids"]
            rows.append((prefix + target, [-100] * len(prefix) + target))
    sums = _forward_sums(model, rows, tokenizer.pad_token_id or 0, batch_size, progress)
    # Losses are negative log-likelihoods: lp(assistant) - lp(user) = loss(user) - loss(assistant).
    return [sums[2 * k + 1][0] - sums[2 * k][0] for k in range(len(items))]


def role_scores(model, tokenizer, items: list[tuple[list[dict], str]], batch_size: int = 8,
                progress: Optional[str] = None, history_messages: int = 0) -> list[float]:
    """:func:`framed_role_scores` (> 0: reads as an assistant answer) with the text before
    the role header a newline, then the last ``history_messages`` messages of the history
    as :func:`chatml_turns` (no system prompt added): the project's ChatML rendering. The
    default 0 scores the text on its own, which separates real user turns from real
    answers best (docs/simulator.md: a history or a system prompt narrows the gap).
    Raises ``ValueError`` for a negative ``history_messages``."""
    if history_messages < 0:
        raise ValueError(f"history_messages must be >= 0, got {history_messages}")
    return framed_role_scores(model, tokenizer, items,
                              lambda h: "\n" + chatml_turns(h[-history_messages:] if history_messages else []),
                              batch_size, progress)


def reads_as_assistant(scores: Sequence[float]) -> float:
    """Share of texts whose score is > 0 (more likely as the assistant's turn)."""
    return sum(1 for s in scores if s > 0) / len(scores) if scores else float("nan")


def real_turn_items(conversations: list[list[dict]]) -> tuple[list, list]:
    """``(user_items, assistant_items)`` for validating the role measure on real turns:
    every user turn ``u_k`` of a multi-turn conversation and the answer ``a_k`` that
    follows it, each paired with the same history (the messages before ``u_k``)."""
    users, answers = [], []
    for msgs in conversations:
        if is_single_turn_conversation(msgs):
            continue
        for k, m in enumerate(msgs):
            if m["role"] == "user" and k + 1 < len(msgs) and msgs[k + 1]["role"] == "assistant":
                history = [{"role": x["role"], "content": x["content"]} for x in msgs[:k]]
                users.append((history, m["content"]))
                answers.append((history, msgs[k + 1]["content"]))
    return users, answers


# ---------------------------------------------------------------- text measures
def chrf(hypotheses: list[str], references: list[str]) -> float:
    """sacrebleu's corpus-level chrF (character n-gram F-score, n=6, beta=2; 0-100)."""
    import sacrebleu

    return float(sacrebleu.corpus_chrf(hypotheses, [references]).score)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (``\\w+`` runs and single symbols)."""
    return WORD_RE.findall(text.lower())


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over ``texts``."""
    grams = [tuple(w[i:i + n]) for t in texts for w in [words(t)] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeats_previous(text: str, previous: str, n: int = 4) -> bool:
    """Whether ``text`` repeats a phrase of ``previous``: shares a word n-gram with it."""
    a, b = words(text), words(previous)
    prev = {tuple(b[i:i + n]) for i in range(len(b) - n + 1)}
    return any(tuple(a[i:i + n]) in prev for i in range(len(a) - n + 1))
