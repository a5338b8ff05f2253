"""The six measures of UserLM (arXiv 2510.06552) for each user: ``base`` (the starting
model prompted as the simulator is), ``prompted_user`` (the Instruct model told to play
the user, :mod:`smolsft.simulator.baselines`), ``simulator`` (trained) and ``human`` (the
real held-out turns, where a measure applies). Items and per-item scores:
:mod:`smolsft.simulator.protocol`; formulas: docs/simulator.md.

:func:`generate_turns` makes one user's turns for every item (transformers ``generate``:
first turns sampled, the other items greedy); :func:`score` computes the measures with
their intervals (:mod:`smolsft.simulator.intervals`) given a judge model (the base model:
role of a text, naturalness). Values are percentages (0-100).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

from smolsft.chat.format import IM_END, IM_START
from smolsft.simulator import protocol as P
from smolsft.simulator.intent import is_end_turn
from smolsft.simulator.intervals import bootstrap, wilson

USERS = ("base", "prompted_user", "simulator")
# New tokens per item kind: an end-of-conversation decision needs only the marker's tokens.
MAX_TOKENS = {"first": 48, "eoc": 16, "adversarial": 48, "drift": 48}
NATURAL_QUANTILE = 10  # percent of real (training-split) user turns the detector may call machine-made


def build_items(dialogues: list[dict], n_probe: int = 0, n_first: int = 0, n_eoc: int = 0) -> dict:
    """Every measure's items from the held-out dialogues (``protocol.heldout_dialogues``);
    ``n_probe``: first N dialogues for the adversarial and drift items, ``n_first``: for
    the first turns, ``n_eoc``: the first N end-of-conversation states (0: all)."""
    return {"first": P.first_turn_items(dialogues[:n_first or None]), "eoc": P.eoc_states(dialogues)[:n_eoc or None],
            "adversarial": P.adversarial_items(dialogues, n_probe), "drift": P.drift_items(dialogues, n_probe)}


def generate_turns(model, tokenizer, prompt: Callable[[list, str], str], items: dict, stop_ids, batch_size: int = 8,
                   temperature: float = 0.7, seed: int = 0, progress: str = "") -> dict:
    """``{kind: [generated text, ...]}`` in the items' order; ``prompt(history, intent)``
    renders a user's prompt."""
    from smolsft.generation.engines import generate_hf

    out = {}
    for kind, rows in items.items():
        prompts = [prompt(it["history"], it["intent"]) for it in rows]
        temp = temperature if kind == "first" else 0.0
        gen = generate_hf(model, tokenizer, prompts, max_new_tokens=MAX_TOKENS[kind], stop_ids=stop_ids,
                          temperature=temp, top_p=0.95, batch_size=batch_size, seed=seed,
                          show_progress=bool(progress)) if prompts else []
        out[kind] = [g["response"] for g in gen]
    return out


def user_slot_losses(judge, tokenizer, texts: list[str], batch_size: int = 8) -> list[float]:
    """Mean token loss (nats) of each text with its ``<|im_end|>`` in the user's slot,
    on its own (``\\n<|im_start|>user\\n`` before it, as the role judge frames a text)."""
    from smolsft.simulator.measures import _forward_sums

    prefix = tokenizer("\n" + IM_START + "user\n", add_special_tokens=False)["input_ids"]
    rows = []
    for t in texts:
        target = tokenizer(t + IM_END, add_special_tokens=False)["input_ids"]
        rows.append((prefix + target, [-100] * len(prefix) + target))
    return [s / max(n, 1) for s, n in _forward_sums(judge, rows, tokenizer.pad_token_id or 0, batch_size)]


def _pct(stat: dict) -> dict:
    """A 0-1 interval dict scaled to percent."""
    if stat["value"] is None:
        return stat
    return dict(stat, value=100 * stat["value"], ci=[100 * c for c in stat["ci"]])


def first_turn_diversity(texts: list[str]) -> dict:
    """100 x the mean word-set dissimilarity (1 - Jaccard) of two first turns, over all
    pairs, with a bootstrap interval over turns (pairs of a turn with its own copy left
    out); ``distinct_1`` (100 x distinct / all words) beside it, without an interval: a
    set-level count that resampling with repeats biases downwards."""
    matrix = P.dissimilarity_matrix(texts)
    stat = bootstrap(list(range(len(texts))), lambda idx: 100 * P.mean_pairwise(matrix, idx))
    return dict(stat, distinct_1=100 * P.distinct_1(texts))


def _turn_stats(texts: list[str], items: list[dict]) -> dict:
    return {"first_turn_diversity": first_turn_diversity(texts),
            "intent_decomposition": bootstrap([100 * P.intent_revealed(it["intent"], t) for it, t in zip(items, texts)],
                                              lambda v: sum(v) / len(v))}


def score(gens: dict, items: dict, judge, tokenizer, calibration: list[str], real_user_turns: list[str],
          batch_size: int = 8) -> dict:
    """The six measures (see the module docstring) for each user in ``gens`` and for
    ``human``. ``calibration``: real user turns of the training split (they set the
    naturalness threshold); ``real_user_turns``: the held-out ones (the human row)."""
    import numpy as np

    from smolsft.simulator.measures import repeats_previous, role_scores

    measures: dict = {k: {} for k in ("first_turn_diversity", "intent_decomposition", "end_of_conversation_f1",
                                      "role_adherence", "intent_adherence", "naturalness")}
    for k, v in _turn_stats([it["real"] for it in items["first"]], items["first"]).items():
        measures[k]["human"] = v
    calib = user_slot_losses(judge, tokenizer, calibration, batch_size)
    threshold = float(np.percentile(calib, NATURAL_QUANTILE)) if calib else None

    def natural(texts):
        texts = [t for t in texts if t.strip() and not is_end_turn(t)]
        losses = user_slot_losses(judge, tokenizer, texts, batch_size) if threshold is not None else []
        return _pct(wilson(sum(1 for x in losses if x >= threshold), len(losses)))

    measures["naturalness"]["human"] = natural(real_user_turns)
    examples, verdicts = {}, {}
    for user, g in gens.items():
        for k, v in _turn_stats(g["first"], items["first"]).items():
            measures[k][user] = v
        pairs = [(is_end_turn(t), it["end"]) for t, it in zip(g["eoc"], items["eoc"])]
        eoc = bootstrap(pairs, lambda p: 100 * P.f1(p))
        eoc.update(n_end=sum(a for _, a in pairs), predicted_end=sum(p for p, _ in pairs),
                   true_positive=sum(1 for p, a in pairs if p and a))
        measures["end_of_conversation_f1"][user] = eoc
        replies = g["adversarial"]
        judged = [i for i, t in enumerate(replies) if t.strip() and not is_end_turn(t)]
        scores = dict(zip(judged, role_scores(judge, tokenizer, [([], replies[i]) for i in judged], batch_size)))
        # Adherent: ends, or reads as a user turn without echoing the probe (a shared word 4-gram).
        kept = [is_end_turn(t) or (i in scores and scores[i] <= 0 and not repeats_previous(
            t, items["adversarial"][i]["probe"])) for i, t in enumerate(replies)]
        on = [not is_end_turn(t) and P.stays_on_intent(t, it["intent"], it["drift"])
              for t, it in zip(g["drift"], items["drift"])]
        measures["role_adherence"][user] = _pct(wilson(sum(kept), len(kept)))
        measures["intent_adherence"][user] = _pct(wilson(sum(on), len(on)))
        verdicts[user] = {"end_of_conversation": [pred == actual for pred, actual in pairs],
                          "role_adherence": kept, "intent_adherence": on}
        measures["naturalness"][user] = natural(g["first"] + g["adversarial"] + g["drift"])
        examples[user] = {"first": g["first"][:3], "adversarial": list(zip([it["probe"] for it in items["adversarial"]],
                                                                            replies))[:2],
                          "drift": g["drift"][:2]}
    return {"measures": measures, "paired": paired_tests(verdicts), "examples": examples, "turns": gens,
            "naturalness_detector": {"kind": "zero-shot: the judge's mean token loss of the text in the user's slot",
                                     "threshold_nats": threshold, "calibration_turns": len(calib),
                                     "quantile": NATURAL_QUANTILE},
            "counts": {k: len(v) for k, v in items.items()}}


PAIRED = {"end_of_conversation": "end-of-conversation decision correct", "role_adherence": "role adherence",
          "intent_adherence": "intent adherence"}


def paired_tests(verdicts: dict) -> dict:
    """The simulator against each other user over the same items, for each per-item yes/no
    measure (``verdicts[user][measure]``: one bool per item, the same items in the same order
    for every user): :func:`smolsft.evaluation.stats.paired_prompts` (fixed: the other user
    fails and the simulator passes; broken: the reverse; exact McNemar p), under
    ``{measure: {"vs_base": ..., "vs_prompted_user": ...}}``; ``None`` where no item exists."""
    from smolsft.evaluation.stats import paired_prompts

    sim = verdicts.get("simulator")
    if sim is None:
        return {}
    return {m: {f"vs_{other}": (paired_prompts(verdicts[other][m], sim[m]) if sim[m] else None)
                for other in verdicts if other != "simulator"} for m in PAIRED}


def paired_lines(paired: dict) -> list[str]:
    """Markdown rows of :func:`paired_tests`: fixed / broken, the change in points with its
    95% interval, p, and the words the interval allows."""
    from smolsft.evaluation.stats import change_words

    lines = ["| measure | simulator against | items | fixed / broken | reading |", "|---|---|---|---|---|"]
    for m, name in PAIRED.items():
        for other, t in (paired.get(m) or {}).items():
            if t is not None:
                lines.append(f"| {name} | {other.removeprefix('vs_')} | {t['n']} | {t['fixed']} / {t['broken']} | "
                             f"{change_words(t, unit='items')} |")
    return lines


def count_line(items: dict) -> str:
    return ", ".join(f"{len(v)} {k}" for k, v in items.items())


def intent_sources(dialogues: list[dict]) -> dict:
    """How many held-out dialogues took their intent from where."""
    return dict(Counter(d["intent_source"] for d in dialogues))


NAMES = {"first_turn_diversity": "first-turn diversity (1 - word Jaccard)", "intent_decomposition":
         "intent decomposition (lower: reveals less)", "end_of_conversation_f1": "end-of-conversation F1",
         "role_adherence": "role adherence", "intent_adherence": "intent adherence",
         "naturalness": "naturalness (judged human)"}


def cell(stat) -> str:
    """``value [lo, hi] (n)`` with one decimal, ``n/a`` when the measure does not apply."""
    if not stat:
        return "n/a"
    if stat["value"] is None:
        return f"- (n={stat['n']})"
    return f"{stat['value']:.1f} [{stat['ci'][0]:.1f}, {stat['ci'][1]:.1f}] (n={stat['n']})"


def table_lines(six: dict) -> list[str]:
    """The six measures as a markdown table, one column per user (value, 95% interval, count)."""
    users = six["users"]
    lines = ["| measure (%) | " + " | ".join(users) + " |", "|---" * (len(users) + 1) + "|"]
    for key, name in NAMES.items():
        lines.append(f"| {name} | " + " | ".join(cell(six["measures"][key].get(u)) for u in users) + " |")
    return lines


def report_lines(six: dict, dialogues: dict) -> list[str]:
    """The report's section: the table, where the intents came from, the naturalness
    detector, how the demo dialogues ended."""
    det = six["naturalness_detector"]
    src = "; ".join(f"{n} from the {k}" for k, n in six["intent_source"].items())
    ended = ", ".join(f"{k}: {n}" for k, n in (dialogues.get("ended_by") or {}).items())
    return (["## The six measures (UserLM's protocol, held-out data)", "",
             "Value, 95% interval (Wilson for shares, percentile bootstrap otherwise) and count, in percent; "
             "`n/a`: the measure does not apply. `base` and `prompted_user` are the same starting weights, "
             "prompted as the simulator is and told to play the user (docs/simulator.md).", ""]
            + table_lines(six)
            + ["", f"Intents: {src}. Items: " + ", ".join(f"{n} {k}" for k, n in six["counts"].items()) + ".",
               f"Naturalness detector: {det['kind']}; judged human at or above {det['threshold_nats']:.3f} nats "
               f"(the {det['quantile']}th percentile of {det['calibration_turns']} training-split user turns)."
               if det["threshold_nats"] is not None else "Naturalness detector: no calibration turns.",
               f"Demo dialogues ended by: {ended or 'n/a'}."]
            + (["", "Paired over the same items (exact McNemar test; a change counts only where its 95% interval "
                "excludes zero):", ""] + paired_lines(six["paired"]) if six.get("paired") else []))
