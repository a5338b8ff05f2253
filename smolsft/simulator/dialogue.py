"""Dialogues between an assistant and a user simulator (``scripts/simulate.py``): which
turn comes next, when a dialogue ends, how a simulator checkpoint was trained.

A dialogue opens with a record's leading system message (if any) and first user turn;
then the assistant and the simulator alternate. It ends when the simulator writes the end
marker (:func:`smolsft.simulator.intent.is_end_turn`; ``ended_by: "simulator"``; the
marker turn is kept in ``turns.jsonl`` but is not a message of the dialogue) or after
``rounds`` assistant turns (``ended_by: "limit"``).

Standard library only.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from smolsft.simulator.intent import is_end_turn

TURN_KEY = 1000  # key = dialogue * TURN_KEY + turn; a dialogue has fewer than 1000 turns
AUTHOR = {"assistant": "assistant", "user": "simulator"}


def assemble(openings: list[dict], done: dict, rounds: int) -> list[dict]:
    """Dialogues from the openings (``{"source", "opening", "intent", "intent_source"}``)
    and the generated turns (records by key), in order. Each holds ``{"dialogue",
    "source", "intent", "intent_source", "messages", "ended_by"}``; ``ended_by`` is
    ``"simulator"``, ``"limit"``, or ``None`` while turns are missing (it stops at its
    first missing turn)."""
    out = []
    for d, o in enumerate(openings):
        msgs = [dict(m, author="data") for m in o["opening"]]
        ended_by = "limit"
        for t in range(2 * rounds - 1):
            rec = done.get(d * TURN_KEY + t)
            if rec is None:
                ended_by = None
                break
            if rec["role"] == "user" and is_end_turn(rec["response"]):
                ended_by = "simulator"
                break
            msgs.append({"role": rec["role"], "content": rec["response"], "author": AUTHOR[rec["role"]]})
        out.append({"dialogue": d, "source": o["source"], "intent": o["intent"], "intent_source": o["intent_source"],
                    "messages": msgs, "ended_by": ended_by})
    return out


def next_turn(dialogue: dict, rounds: int) -> Optional[int]:
    """Index of the next turn to generate (0: the first answer), ``None`` when the
    dialogue has ended (by the simulator or at the limit)."""
    if dialogue["ended_by"] == "simulator":
        return None
    made = sum(1 for m in dialogue["messages"] if m["author"] != "data")
    return made if made < 2 * rounds - 1 else None


def add_turn(dialogue: dict, role: str, text: str, rounds: int) -> None:
    """Append a generated turn to an unfinished dialogue and update ``ended_by``."""
    if role == "user" and is_end_turn(text):
        dialogue["ended_by"] = "simulator"
        return
    dialogue["messages"].append({"role": role, "content": text, "author": AUTHOR[role]})
    made = sum(1 for m in dialogue["messages"] if m["author"] != "data")
    dialogue["ended_by"] = "limit" if made >= 2 * rounds - 1 else None


def simulator_training(path: str) -> Optional[dict]:
    """The ``data_args`` of a checkpoint's ``run_manifest.json`` (how it was trained), or
    ``None`` when the folder has none (a hub id, a base model). Raises ``ValueError``
    naming the file when it cannot be read."""
    manifest = Path(path) / "run_manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("data_args") or {}
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{manifest}: unreadable ({e})") from None


def check_simulator(path: str, insist: bool, log: Callable[[str], None]) -> Optional[dict]:
    """Refuse (``SystemExit``) a simulator whose manifest says it was not trained with
    ``--mask_mode reverse`` unless ``insist``, then only warn; warn when there is no
    manifest to tell. Returns the manifest's ``data_args`` (or ``None``)."""
    try:
        trained = simulator_training(path)
    except ValueError as e:
        raise SystemExit(f"[simulate] error: {e}") from None
    if trained is None:
        log(f"[simulate] warning: {path} has no run_manifest.json: cannot tell whether it was trained as a user "
            "simulator (--mask_mode reverse)")
        return None
    mode = trained.get("mask_mode")
    if mode != "reverse":
        msg = (f"{path}/run_manifest.json says mask_mode: {mode}: it was trained to write the assistant's turns, "
               "not the user's")
        if not insist:
            raise SystemExit(f"[simulate] error: {msg}; train one with --mask_mode reverse, or pass --any_simulator "
                             "to run it anyway")
        log(f"[simulate] warning: {msg} (--any_simulator given: running it anyway)")
    return trained


def write_markdown(path: Path, dialogues: list[dict], settings: dict) -> None:
    """The dialogues for a person to read: one section per dialogue, who wrote each turn,
    its intent and why it ended."""
    lines = [f"# Dialogues: assistant `{settings['assistant_path']}` and simulator `{settings['simulator_path']}`", "",
             f"{len(dialogues)} dialogues, at most {settings['rounds']} rounds (assistant turns) each; openings from "
             f"`{settings['openings']}`; the simulator samples at temperature {settings['simulator_temperature']}, "
             f"the assistant at {settings['assistant_temperature']}; {settings['engine']}.", ""]
    names = {"data": "(opening, from the data)", "assistant": "(assistant model)", "simulator": "(simulator)"}
    for d in dialogues:
        lines += [f"## Dialogue {d['dialogue']} (from {d['source']})", "",
                  f"*Intent ({d['intent_source']}):* {d['intent'] if settings.get('intent') else '(not given)'}", ""]
        for m in d["messages"]:
            body = m["content"].strip() or "*(empty)*"
            lines += [f"**{m['role']}** {names[m['author']]}", ""] + ["> " + x for x in body.splitlines()] + [""]
        lines += [f"*Ended by: {d['ended_by']}.*", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
