"""Generate the embedded demonstration chat set data/demo_sft.json.

The set is small (a few hundred conversations) and made of *verifiable-instruction*
conversations: every user request carries constraints of the kinds IFEval checks
(letter case, word / sentence counts, bullet lists, titles in <<...>>, a postscript, a
required ending, no commas, JSON output, placeholders in [brackets], numbered sections,
highlighted *parts*, paragraphs split by ***, ...), worded from data/demo_wording.json.
Each answer is composed from the original sentences in data/demo_topics.json so that it
satisfies those constraints, and is then CHECKED with the project's own IFEval scorer
(ifeval/scoring.py, strict mode) using the same instruction ids and arguments an IFEval
prompt would carry. An answer that fails
is rebuilt with fresh random choices (the number of rebuilds is printed per instruction);
if one cannot be fixed in a few tries the script stops with the failing case.

No text is taken from IFEval: every request is also compared with the IFEval prompt set
(ifeval/data/input_data.jsonl) and the script fails if any user message shares a run of
--max_shared_words consecutive words with an IFEval prompt.

Outputs: the chat set in the course format ``[{"id", "intent", "conversations": [{"role",
"content"}, ...]}]`` and a sidecar JSONL (one line per assistant turn: conversation id,
turn index, instruction ids, arguments) so anyone can re-verify the answers.

How an answer is built: a layout (plain text, bullets, sections, paragraphs, JSON, ...) is
drawn and its builder in ``LAYOUTS`` writes the body; decorations allowed with that layout
(title, highlights, postscript, ending, letter case, ...) are applied in a fixed order; the
counted constraints (``MEASURED``) are set last from the finished text with a margin.

Each record's ``intent`` is the user's goal as the generator knows it by construction (the
topic of each request and the kinds of rules it sets, :func:`conversation_intent`): the user
simulator (``--mask_mode reverse``, docs/simulator.md) is told it in its system message.
It is made from what was drawn and draws nothing itself, so the conversations are the same.

    python tools/make_demo_data.py                 # writes data/demo_sft.json (seed 1234)
    python tools/make_demo_data.py --seed 7 --num 50 --out /tmp/x.json --checks_out /tmp/x.jsonl
"""
from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
TOPICS_FILE = REPO / "data" / "demo_topics.json"
WORDING_FILE = REPO / "data" / "demo_wording.json"


class DemoDataError(RuntimeError):
    """The generator could not build an answer that passes its own instructions, or its
    content bank is unusable (the message names the file)."""


def read_table(path: Path, what: str, need: dict[str, type], problems=lambda table: "") -> dict:
    """A JSON object read from ``path`` whose keys in ``need`` each hold a non-empty value
    of the given type, and for which ``problems(table)`` finds nothing (it returns a
    description, or ""); DemoDataError naming the file, the keys and the problems otherwise."""
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DemoDataError(f"{path}: cannot read the {what} ({e})") from None
    missing = [k for k, kind in need.items() if not isinstance(table.get(k), kind) or not table[k]]
    more = problems(table)
    if missing or more:
        raise DemoDataError(f"{path}: missing or empty {missing}" + (f"; {more}" if more else ""))
    return table


def load_bank(path: Path = TOPICS_FILE) -> dict:
    """The content bank: ``topics`` (name, titles, facts), ``system_prompts``,
    ``placeholder_sentences``, ``postscripts``, ``end_phrases``, ``forbidden_candidates``."""
    def topics_without_fields(bank):
        bad = [i for i, t in enumerate(bank.get("topics") or []) if not {"name", "titles", "facts"} <= set(t)]
        return f"topics without name/titles/facts: {bad}" if bad else ""

    need = ("topics", "system_prompts", "placeholder_sentences", "postscripts", "end_phrases", "forbidden_candidates")
    return read_table(path, "content bank", dict.fromkeys(need, list), topics_without_fields)


BANK = load_bank()
TOPICS = BANK["topics"]


# ----------------------------------------------------------------------------- wording
def load_wording(path: Path = WORDING_FILE) -> dict:
    """The request wording (data/demo_wording.json): ``tasks``, ``follow_new`` and
    ``constrained_questions`` ({name} is a topic's name), ``follow_same``, ``phrases``
    (instruction id -> phrasings, or relation -> phrasings; {placeholders} are the
    instruction's arguments), ``section_words`` and ``bullet_intros``."""
    need = dict.fromkeys(("tasks", "follow_same", "follow_new", "constrained_questions", "section_words",
                          "bullet_intros"), list)
    return read_table(path, "request wording", {**need, "phrases": dict})


WORDING = load_wording()
TASKS = WORDING["tasks"]
FOLLOW_SAME = WORDING["follow_same"]
FOLLOW_NEW = WORDING["follow_new"]
CONSTRAINED_QUESTIONS = WORDING["constrained_questions"]
PHRASES = WORDING["phrases"]
SECTION_WORDS = WORDING["section_words"]

# ----------------------------------------------------------------------------- helpers
def word_count(text: str) -> int:
    """Words as IFEval counts them: runs of word characters."""
    return len(re.findall(r"\w+", text))


def sentence_count(text: str) -> int:
    """Sentences by NLTK's Punkt splitter (the splitter IFEval's length checks use)."""
    import nltk
    return len(nltk.tokenize.sent_tokenize(text))


def capital_word_count(text: str) -> int:
    import nltk
    return sum(1 for w in nltk.word_tokenize(text) if w.isupper())


def quoted_list(words: list[str]) -> str:
    """'the word "x"' or 'the words "x" and "y"'."""
    q = [f'"{w}"' for w in words]
    return f"the word {q[0]}" if len(q) == 1 else "the words " + " and ".join(q)


def highlight(sentence: str, rng: random.Random) -> str:
    """Wrap one or two words (never the first, so the line cannot look like a bullet) in *...*."""
    words = sentence.split(" ")
    if len(words) < 4:
        return sentence
    i = rng.randrange(1, len(words) - 2)
    span = rng.choice([1, 2])
    words[i] = "*" + words[i]
    words[i + span - 1] = words[i + span - 1] + "*"
    return " ".join(words)


def phrase(rng: random.Random, inst: str, kw: dict) -> str:
    """One request sentence for an instruction, in a random variant of our own wording."""
    table = PHRASES[inst]
    if isinstance(table, dict):
        rel = kw.get("relation") or kw.get("let_relation") or kw.get("capital_relation")
        table = table[rel]
    fill = dict(kw)
    if "keywords" in kw:
        fill["keywords_text"] = quoted_list(kw["keywords"])
    if "forbidden_words" in kw:
        fill["forbidden_text"] = quoted_list(kw["forbidden_words"])
    return rng.choice(table).format(**fill)


# ----------------------------------------------------------------------------- layouts
# One builder per answer layout: (rng, shuffled facts, decorations, letter case, topic,
# task) -> Body. A builder that writes highlights says how many (n_high); ``kwargs`` is
# the layout's own instruction arguments (None: the layout adds no instruction here).
@dataclass
class Body:
    text: str
    kwargs: Optional[dict] = None
    intro: str = ""
    n_high: int = 0
    task: Optional[str] = None  # a layout that asks its own question replaces the task


def highlight_first(items: list[str], n: int, rng: random.Random) -> list[str]:
    """``items`` with a highlighted phrase in each of the first ``n``."""
    return [highlight(it, rng) if j < n else it for j, it in enumerate(items)]


def layout_plain(rng, facts, decos, case, topic, task) -> Body:
    k = rng.randint(2, min(5, len(facts)))
    sents, n_high = facts[:k], 0
    if "highlights" in decos:
        n_high = rng.randint(1, min(3, k))
        sents = highlight_first(sents, n_high, rng)
    return Body(" ".join(sents), n_high=n_high)


def layout_bullets(rng, facts, decos, case, topic, task) -> Body:
    nb = rng.randint(2, min(5, len(facts)))
    items, n_high = facts[:nb], 0
    if "highlights" in decos:
        n_high = rng.randint(1, nb)
        items = highlight_first(items, n_high, rng)
    intro = rng.choice(WORDING["bullet_intros"])
    return Body("\n".join("* " + it for it in items), {"num_bullets": nb}, intro, n_high)


def layout_sections(rng, facts, decos, case, topic, task) -> Body:
    ns = rng.randint(2, 4)
    spl = rng.choice(SECTION_WORDS)
    if case == "upper":
        spl = spl.upper()
    per = max(1, min(2, len(facts) // ns))
    blocks, n_high = [], 0
    for j in range(ns):
        chunk = facts[j * per:(j + 1) * per] or [facts[j % len(facts)]]
        if "highlights" in decos and j < 2:
            chunk = [highlight(chunk[0], rng)] + chunk[1:]
            n_high = j + 1
        blocks.append(f"{spl} {j + 1}\n" + " ".join(chunk))
    return Body("\n\n".join(blocks), {"section_spliter": spl, "num_sections": ns}, n_high=n_high)


def _paragraphs(rng, facts, decos) -> tuple[list[str], int]:
    npar = rng.randint(2, 4)
    per = max(1, min(2, len(facts) // npar))
    paras = [" ".join(facts[j * per:(j + 1) * per]) for j in range(npar)]
    n_high = min(2, npar) if "highlights" in decos else 0
    return highlight_first(paras, n_high, rng), n_high


def layout_paragraphs(rng, facts, decos, case, topic, task) -> Body:
    paras, n_high = _paragraphs(rng, facts, decos)
    return Body("\n***\n".join(paras), {"num_paragraphs": len(paras)}, n_high=n_high)


def layout_nth_paragraph(rng, facts, decos, case, topic, task) -> Body:
    paras, n_high = _paragraphs(rng, facts, decos)
    nth = rng.randint(1, len(paras))
    first = re.sub(r"[^a-z]", "", paras[nth - 1].split()[0].lower())
    return Body("\n\n".join(paras), {"num_paragraphs": len(paras), "nth_paragraph": nth, "first_word": first},
                n_high=n_high)


def layout_json(rng, facts, decos, case, topic, task) -> Body:
    obj = {"topic": topic["name"], "main_points": facts[:rng.randint(2, 4)]}
    if rng.random() < 0.5:
        obj = {"title": rng.choice(topic["titles"]), **obj}
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    return Body(f"```json\n{text}\n```" if rng.random() < 0.6 else text, {})


def layout_two_responses(rng, facts, decos, case, topic, task) -> Body:
    k = rng.randint(2, 3)
    return Body(" ".join(facts[:k]) + "\n******\n" + " ".join(facts[k:2 * k]), {})


def layout_constrained(rng, facts, decos, case, topic, task) -> Body:
    verdict = rng.choice(["My answer is yes.", "My answer is yes.", "My answer is maybe."])
    body = verdict + " " + " ".join(facts[:rng.randint(2, 3)])
    return Body(body, {}, task=rng.choice(CONSTRAINED_QUESTIONS).format(name=topic["name"]))


def layout_repeat(rng, facts, decos, case, topic, task) -> Body:
    # The answer opens with the request copied exactly; that is added after the decorations.
    return Body(" ".join(facts[:rng.randint(2, 4)]))


# layout -> (weight, its instruction id, builder, decorations allowed with it). The
# decorations left out are those whose official checkers contradict the layout's or whose
# combination would read unnaturally.
LAYOUTS = {
    "plain": (5, None, layout_plain,
              {"title", "highlights", "placeholders", "postscript", "end", "quotation", "case", "no_comma",
               "existence", "forbidden", "frequency", "letters", "words", "sentences", "capitals"}),
    "bullets": (4, "detectable_format:number_bullet_lists", layout_bullets,
                {"title", "highlights", "placeholders", "postscript", "end", "case", "no_comma",
                 "existence", "forbidden", "frequency", "letters", "words", "capitals"}),
    "sections": (3, "detectable_format:multiple_sections", layout_sections,
                 {"title", "highlights", "placeholders", "postscript", "end", "quotation", "case",
                  "no_comma", "existence", "forbidden", "frequency", "letters", "words", "sentences"}),
    "paragraphs": (3, "length_constraints:number_paragraphs", layout_paragraphs,
                   {"title", "highlights", "placeholders", "postscript", "end", "case", "no_comma",
                    "existence", "forbidden", "frequency", "letters", "words", "sentences", "capitals"}),
    "nth_paragraph": (2, "length_constraints:nth_paragraph_first_word", layout_nth_paragraph,
                      {"highlights", "postscript", "end", "case", "no_comma", "existence",
                       "forbidden", "letters", "words"}),
    "json": (2, "detectable_format:json_format", layout_json, {"case", "existence", "forbidden", "words"}),
    "two_responses": (1.5, "combination:two_responses", layout_two_responses,
                      {"case", "no_comma", "existence", "forbidden", "words", "letters"}),
    "constrained": (1, "detectable_format:constrained_response", layout_constrained,
                    {"no_comma", "existence", "forbidden", "words", "postscript", "end"}),
    "repeat": (1, "combination:repeat_prompt", layout_repeat, {"case", "postscript", "end", "title"}),
}
DECORATION_IDS = {
    "title": "detectable_format:title",
    "highlights": "detectable_format:number_highlighted_sections",
    "placeholders": "detectable_content:number_placeholders",
    "postscript": "detectable_content:postscript",
    "end": "startend:end_checker",
    "quotation": "startend:quotation",
    "no_comma": "punctuation:no_comma",
    "existence": "keywords:existence",
    "forbidden": "keywords:forbidden_words",
    "frequency": "keywords:frequency",
    "letters": "keywords:letter_frequency",
    "words": "length_constraints:number_words",
    "sentences": "length_constraints:number_sentences",
    "capitals": "change_case:capital_word_frequency",
}


# --------------------------------------------------------------- counted constraints
# Measured on the finished answer with a margin, so they hold by construction:
# (rng, answer, topic, letter case) -> kwargs.
def measure_words(rng, body, topic, case) -> dict:
    n = word_count(body)
    if rng.random() < 0.5 and n >= 20:
        return {"relation": "at least", "num_words": max(10, (int(n * 0.8) // 10) * 10)}
    return {"relation": "less than", "num_words": (int(n * 1.2) // 10 + 1) * 10}


def measure_sentences(rng, body, topic, case) -> dict:
    n = sentence_count(body)
    if rng.random() < 0.5 and n >= 3:
        return {"relation": "at least", "num_sentences": n - 1}
    return {"relation": "less than", "num_sentences": n + rng.randint(1, 3)}


def measure_frequency(rng, body, topic, case) -> dict:
    words = re.findall(r"[a-z]{5,}", topic["name"].lower())
    kw_word = rng.choice(words) if words else "the"
    n = len(re.findall(kw_word, body, flags=re.I))
    if n >= 2 and rng.random() < 0.6:
        return {"relation": "at least", "keyword": kw_word, "frequency": n}
    return {"relation": "less than", "keyword": kw_word, "frequency": n + rng.randint(1, 3)}


def measure_letters(rng, body, topic, case) -> dict:
    letter = rng.choice("abcdefghilmnoprstuwy")
    n = Counter(body.lower())[letter]
    if n >= 3 and rng.random() < 0.5:
        return {"let_relation": "at least", "letter": letter, "let_frequency": max(1, n - rng.randint(0, 2))}
    return {"let_relation": "less than", "letter": letter, "let_frequency": n + rng.randint(1, 5)}


def measure_capitals(rng, body, topic, case) -> dict:
    n = capital_word_count(body)
    if case == "upper" and n >= 2:
        return {"capital_relation": "at least", "capital_frequency": n // 2}
    return {"capital_relation": "less than", "capital_frequency": n + rng.randint(2, 4)}


MEASURED = {"words": measure_words, "sentences": measure_sentences, "frequency": measure_frequency,
            "letters": measure_letters, "capitals": measure_capitals}


# ----------------------------------------------------------------------------- answers
def build_turn(rng: random.Random, topic: dict, task: str) -> tuple[str, str, list[str], list[dict]]:
    """Compose one (request, answer, instruction ids, kwargs) for a topic.

    The answer is built layout first (its builder in ``LAYOUTS``), then decorated in a
    fixed order (highlights, placeholders, title, postscript, ending, quotes, letter case,
    keywords), and the counted constraints (``MEASURED``) are set last from the finished
    text; the IFEval checker then confirms it.
    """
    layout = rng.choices(list(LAYOUTS), weights=[w for w, *_ in LAYOUTS.values()])[0]
    _, layout_id, builder, allowed = LAYOUTS[layout]
    n_dec = rng.choice([1, 1, 2, 2, 3]) if layout != "plain" else rng.choice([1, 2, 2, 3])
    decos = set(rng.sample(sorted(allowed), min(n_dec, len(allowed))))
    if "quotation" in decos and layout == "plain" and rng.random() < 0.5:
        decos.discard("quotation")  # keep quoted answers rarer: they read oddly
    facts = list(topic["facts"])
    rng.shuffle(facts)
    ids, kws = [], []

    def add(inst, kw):
        ids.append(inst)
        kws.append(kw)

    case = rng.choice(["upper", "lower"]) if "case" in decos else None
    if layout == "sections" and case == "lower":
        case = "upper"  # the section splitter is matched case-sensitively

    built = builder(rng, facts, decos, case, topic, task)
    body, task = built.text, built.task or task
    if built.kwargs is not None:
        add(layout_id, built.kwargs)
    if "highlights" in decos and built.n_high:
        add(DECORATION_IDS["highlights"], {"num_highlights": rng.randint(1, built.n_high)})
    if "placeholders" in decos:
        np_sent = rng.sample(BANK["placeholder_sentences"], rng.randint(1, 2))
        body = body + "\n\n" + " ".join(np_sent)
        n_ph = sum(len(re.findall(r"\[.*?\]", s)) for s in np_sent)
        add(DECORATION_IDS["placeholders"], {"num_placeholders": rng.randint(1, n_ph)})
    if built.intro:
        body = built.intro + "\n" + body
    if "title" in decos:
        body = f"<<{rng.choice(topic['titles'])}>>\n\n" + body
        add(DECORATION_IDS["title"], {})
    sep = "\n" if layout == "nth_paragraph" else "\n\n"
    if "postscript" in decos:
        marker = rng.choice(["P.S.", "P.S.", "P.P.S"])
        body = body + sep + f"{marker} {rng.choice(BANK['postscripts'])}"
        add(DECORATION_IDS["postscript"], {"postscript_marker": marker})
    if "end" in decos:
        end_phrase = rng.choice(BANK["end_phrases"])
        body = body + sep + end_phrase
        add(DECORATION_IDS["end"], {"end_phrase": end_phrase})
    if layout == "repeat":
        body = task + "\n\n" + body
    if "quotation" in decos:
        body = f'"{body}"'
        add(DECORATION_IDS["quotation"], {})
    if case == "upper":
        body = body.upper()
        add("change_case:english_capital", {})
    elif case == "lower":
        body = body.lower()
        add("change_case:english_lowercase", {})
    if "no_comma" in decos:
        add(DECORATION_IDS["no_comma"], {})
    if "existence" in decos:
        # content words of the topic's facts that made it into the answer (not JSON keys)
        fact_words = {w.lower() for w in re.findall(r"[A-Za-z]{6,}", " ".join(topic["facts"]))}
        cands = sorted(fact_words & {w.lower() for w in re.findall(r"[A-Za-z]{6,}", body)})
        if cands:
            add(DECORATION_IDS["existence"], {"keywords": rng.sample(cands, min(len(cands), rng.randint(1, 2)))})
    if "forbidden" in decos:
        ok = [w for w in BANK["forbidden_candidates"] if not re.search(r"\b" + w + r"\b", body, flags=re.I)]
        add(DECORATION_IDS["forbidden"], {"forbidden_words": rng.sample(ok, rng.randint(1, 2))})
    for name, measure in MEASURED.items():
        if name in decos:
            add(DECORATION_IDS[name], measure(rng, body, topic, case))

    # --- the request: task first, constraints in random order
    kw_by_id = [(i, k) for i, k in zip(ids, kws) if i != "combination:repeat_prompt"]
    rng.shuffle(kw_by_id)
    rules = [phrase(rng, i, k) for i, k in kw_by_id]
    if layout == "repeat":
        request = phrase(rng, "combination:repeat_prompt", {}) + " " + task
        if rules:
            request = " ".join(rules) + " " + request
        add("combination:repeat_prompt", {"prompt_to_repeat": task})
    elif rules and rng.random() < 0.3:
        request = task + "\nRules:\n" + "\n".join(f"- {r}" for r in rules)
    else:
        request = " ".join([task] + rules)
    return request, body, ids, kws


# ----------------------------------------------------------------------------- intent
def rule_name(instruction_id: str) -> str:
    """``length_constraints:number_words`` -> ``number words``."""
    return instruction_id.split(":", 1)[-1].replace("_", " ")


def conversation_intent(turns: list[tuple[str, bool, list[str]]]) -> str:
    """The user's goal for a conversation whose turns are ``(topic name, same topic as the
    turn before, instruction ids)``, e.g. ``Ask about the water cycle (rules: no comma,
    title), then more about the same topic (rules: number words).``"""
    parts = []
    for k, (topic, same, ids) in enumerate(turns):
        what = "more about the same topic" if same else f"about {topic}"
        rules = sorted({rule_name(i) for i in ids})
        parts.append(("Ask " if k == 0 else "then ") + what + (f" (rules: {', '.join(rules)})" if rules else ""))
    return ", ".join(parts) + "."


# ----------------------------------------------------------------------------- driver
def load_checker():
    """The project's IFEval scorer, as check(ids, kwargs, prompt, response) -> strict verdicts."""
    from ifeval.scoring import check_response

    def strict_verdicts(ids, kwargs, prompt, response):
        record = {"instruction_id_list": ids, "kwargs": kwargs, "prompt": prompt}
        return check_response(record, response)["strict"]
    return strict_verdicts


def make_conversations(seed: int, num: int, check_response, max_tries: int = 8, progress: bool = True):
    """Build `num` conversations; returns (records, checks, stats)."""
    rng = random.Random(seed)
    records, checks = [], []
    stats = {"per_instruction": Counter(), "rebuilt": Counter(), "turns": Counter(), "system": 0}
    for ci in tqdm(range(num), desc="conversations", disable=not progress):
        conv_id = f"demo-{seed}-{ci:04d}"
        n_turns = rng.choices([1, 2, 3], weights=[6, 3, 1])[0]
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(BANK["system_prompts"])})
            stats["system"] += 1
        topic = rng.choice(TOPICS)
        goal = []  # (topic name, same topic as before, instruction ids) per turn
        for t in range(n_turns):
            same = False
            if t == 0:
                task = rng.choice(TASKS).format(name=topic["name"])
            elif rng.random() < 0.5:
                task = rng.choice(FOLLOW_SAME)
                same = True
            else:
                topic = rng.choice(TOPICS)
                task = rng.choice(FOLLOW_NEW).format(name=topic["name"])
            for attempt in range(max_tries):
                request, answer, ids, kws = build_turn(rng, topic, task)
                strict = check_response(ids, kws, request, answer)
                if all(strict):
                    break
                for i, ok in zip(ids, strict):
                    if not ok:
                        stats["rebuilt"][i] += 1
            else:
                bad = [i for i, ok in zip(ids, strict) if not ok]
                raise DemoDataError(f"{conv_id} turn {t}: answer fails {bad} after {max_tries} tries\n"
                                    f"request: {request}\nkwargs: {kws}\nanswer:\n{answer}")
            msgs.append({"role": "user", "content": request})
            msgs.append({"role": "assistant", "content": answer})
            checks.append({"id": conv_id, "turn": t, "instruction_id_list": ids, "kwargs": kws})
            goal.append((topic["name"], same, ids))
            stats["per_instruction"].update(ids)
        stats["turns"][n_turns] += 1
        records.append({"id": conv_id, "intent": conversation_intent(goal), "conversations": msgs})
    return records, checks, stats


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = re.findall(r"[a-z0-9]+", text.lower())
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


def check_no_ifeval_wording(records: list[dict], ifeval_path: Path, n: int) -> int:
    """Fail if a user/system message shares n consecutive words with an IFEval prompt."""
    ref = set()
    with open(ifeval_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                ref |= ngrams(json.loads(line)["prompt"], n)
    hits = []
    for r in records:
        for m in r["conversations"]:
            if m["role"] != "assistant":
                shared = ngrams(m["content"], n) & ref
                if shared:
                    hits.append((r["id"], " ".join(sorted(shared)[0])))
    if hits:
        raise DemoDataError(f"{len(hits)} messages share {n}-word runs with IFEval prompts, e.g. {hits[:5]}")
    return len(ref)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--num", type=int, default=360, help="number of conversations")
    ap.add_argument("--out", default=str(REPO / "data" / "demo_sft.json"))
    ap.add_argument("--checks_out", default=str(REPO / "data" / "demo_sft_checks.jsonl"),
                    help="sidecar: instruction ids and kwargs of every assistant turn")
    ap.add_argument("--ifeval_prompts", default=str(REPO / "ifeval" / "data" / "input_data.jsonl"),
                    help="IFEval prompt set the requests must not copy from")
    ap.add_argument("--max_shared_words", type=int, default=6,
                    help="fail if a request shares this many consecutive words with an IFEval prompt")
    args = ap.parse_args(argv)

    from smolsft.files import setup_nltk_data
    setup_nltk_data()
    records, checks, stats = make_conversations(args.seed, args.num, load_checker())
    ifeval_path = Path(args.ifeval_prompts)
    if not ifeval_path.exists():
        raise SystemExit(f"{ifeval_path} not found: run `bash setup.sh` first (needed for the wording check)")
    n_ref = check_no_ifeval_wording(records, ifeval_path, args.max_shared_words)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(args.checks_out, "w", encoding="utf-8") as f:
        for c in checks:
            f.write(json.dumps(c, ensure_ascii=False, sort_keys=True) + "\n")

    print("instructions per type (all verified strict by ifeval.scoring):")
    for inst, n in sorted(stats["per_instruction"].items()):
        print(f"  {inst:45s} {n:4d}   rebuilt {stats['rebuilt'][inst]}")
    turns = ", ".join(f"{k}-turn {v}" for k, v in sorted(stats["turns"].items()))
    print(f"wrote {len(records)} conversations ({turns}; {stats['system']} with a system prompt), "
          f"{len(checks)} verified answers, {sum(stats['per_instruction'].values())} instructions to {args.out} "
          f"({Path(args.out).stat().st_size / 1024:.0f} KiB); no {args.max_shared_words}-word overlap with "
          f"{ifeval_path.name}")


if __name__ == "__main__":
    main()
