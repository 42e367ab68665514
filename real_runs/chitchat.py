"""The Chit Chat Challenge corpus (``chitchat-dataset`` on PyPI, MIT licence), split by prompt.

Layout of ``chitchat_dataset/dataset.json`` (checked by :func:`load_chitchat`): one JSON
object ``{conversation id: conversation}``; a conversation is an object with

- ``"messages"``: a list of turns; a turn is a non-empty list of messages sent in a row by
  one speaker, each an object with a string ``"text"`` (and ``"sender"``, ``"timestamp"``);
- ``"prompt"`` (optional; 239 of the 7,168 conversations have none and 4 an empty one): the
  one of 34 conversation starters the two speakers were given (35 distinct values counting
  the empty string); ``"ratings"``, ``"start"``: unused.

A turn's messages are joined with one space (as the package's own ``ConversationDataset``
does), so a conversation becomes a list of turns, the dialogue format of ``data.py``.

The split is by prompt, so that fine-tuning is a real domain shift and no fine-tuning or
evaluation conversation is ever seen in pretraining: the eight prompts about computers and
artificial intelligence (``HELDOUT_PROMPTS``: 835 conversations with ≥ 2 turns, ≈ 500k words)
are held out of pretraining entirely; the other 26 prompts and the prompt-less conversations
(3,179, ≈ 1.86M words, after dropping 3 copies of held-out conversations) are the pretraining
corpus. (Of the 7,168 conversations, 3,151 have fewer than two non-empty turns and are
dropped, leaving 4,017 with all 34 prompts.) Counts: ``tests/test_real_runs_chitchat.py``.

Holding out the prompts alone is not a domain shift for a model pretrained on the rest: the
other prompts' conversations talk about computers too, and the shipped "chitchat" model's base
loss on the held-out conversations is *below* its own validation loss (results/testbed.json).
:func:`split_by_topic` also holds the topic out **by content**: a pretraining conversation any
of whose turns matches :data:`TOPIC_PATTERN` (computer, robot, AI, artificial, intelligence,
android, cyborg) is dropped as well (547 of the 3,115 pretraining conversations), so the
fine-tuning conversations — the same eight prompts' — bring text the model has rarely seen.
(Measured before building the model, with a Kneser–Ney bigram model trained on each
pretraining corpus: adding 400 held-out conversations to it lowers the held-out loss by 0.031
nats under the prompt split and by 0.097 under the topic split, against 0.020 and 0.030 for
400 more pretraining-distribution conversations; the shipped models' own numbers are in
their ``embedded_info.json`` and results/testbed.json.)
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from real_runs.data import DataError

# The held-out theme: every prompt of the corpus that is about computers / AI (8 of 35).
HELDOUT_PROMPTS = (
    "Can computers fall in love?",
    "Do you think computers will ever be given the right to vote?",
    "How would you define true artificial intelligence?",
    "If a computer becomes indistinguishable from a person, is it murder to turn it off?",
    "Is it still catfishing if it's a computer doing it?",
    "What if computers started asking not to be turned off?",
    "What would happen if two computers chatted with each other?",
    "Which intelligent movie computer do you like best? (i.e. Jarvis from Iron Man, HAL from Space "
    "Odyssey 2000, the Star Trek Computer, the robot from Interstellar, etc.)",
)


def chitchat_path() -> Path:
    """Path of the installed ``chitchat_dataset/dataset.json`` (DataError if not installed)."""
    try:
        import chitchat_dataset
    except ImportError as err:
        raise DataError(
            "the chitchat corpus needs the 'chitchat-dataset' package "
            "(pip install chitchat-dataset, part of the [torch] extra)"
        ) from err
    return Path(chitchat_dataset.__file__).resolve().parent / "dataset.json"


@dataclass(frozen=True)
class Conversation:
    id: str
    prompt: str | None
    turns: tuple[str, ...]


def load_chitchat(path: str | os.PathLike | None = None) -> list[Conversation]:
    """All conversations with ≥ 2 non-empty turns, sorted by conversation id.

    Raises FileNotFoundError naming a missing file and DataError naming the file and the
    offending conversation for any departure from the layout in the module docstring.
    """
    path = Path(path) if path is not None else chitchat_path()
    if not path.is_file():
        raise FileNotFoundError(f"chitchat dataset file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"chitchat file {path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not data:
        raise DataError(
            f"chitchat file {path}: expected a non-empty JSON object "
            f"{{conversation id: conversation}}, got {type(data).__name__}"
        )
    out = []
    for cid in sorted(data):
        conv = data[cid]
        where = f"chitchat file {path}, conversation {cid!r}"
        if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
            raise DataError(f"{where}: expected an object with a 'messages' list of turns")
        prompt = conv.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
        turns = []
        for j, turn in enumerate(conv["messages"]):
            if not isinstance(turn, list) or not all(
                isinstance(m, dict) and isinstance(m.get("text"), str) for m in turn
            ):
                raise DataError(
                    f"{where}: turn {j} must be a list of messages with a string 'text'"
                )
            t = " ".join(m["text"].strip() for m in turn if m["text"].strip())
            if t:
                turns.append(t)
        if len(turns) >= 2:
            out.append(Conversation(id=cid, prompt=(prompt or None), turns=tuple(turns)))
    if not out:
        raise DataError(f"chitchat file {path}: no conversation with at least two turns")
    return out


def split_by_prompt(convs: list[Conversation], heldout_prompts=HELDOUT_PROMPTS):
    """(pretraining conversations, held-out-prompt conversations), each in id order.

    A few conversations appear in the file twice under different prompts (2 exact copies of
    held-out ones; 1 more sharing its first three turns): any conversation whose first three
    turns equal those of a held-out one is dropped from pretraining.
    """
    held = set(heldout_prompts)
    fine = [c for c in convs if c.prompt in held]
    seen = {c.turns[:3] for c in fine}
    pre = [c for c in convs if c.prompt not in held and c.turns[:3] not in seen]
    return pre, fine


# The held-out topic's key terms (case-insensitive, whole words): a pretraining conversation
# with any of them in any turn is dropped by split_by_topic.
TOPIC_PATTERN = re.compile(
    r"\b(computers?|robots?|robotic\w*|androids?|cyborgs?|a\.?i\.?s?|artificial(ly)?|intelligen\w*)\b",
    re.IGNORECASE,
)

HOLDOUTS = ("prompts", "topic")


def split_by_topic(convs: list[Conversation], heldout_prompts=HELDOUT_PROMPTS):
    """(pretraining conversations, held-out-prompt conversations), the topic held out by content.

    The held-out conversations are :func:`split_by_prompt`'s; the pretraining ones are its
    pretraining conversations minus every one with a turn matching :data:`TOPIC_PATTERN`.
    """
    pre, fine = split_by_prompt(convs, heldout_prompts)
    pre = [c for c in pre if not any(TOPIC_PATTERN.search(t) for t in c.turns)]
    return pre, fine


def pretraining_split(
    convs: list[Conversation], *, valid_frac: float = 0.02, seed: int = 0, heldout: str = "prompts"
):
    """The pretraining conversations, split (seeded shuffle) into train / validation lists of turns.

    ``heldout``: "prompts" (:func:`split_by_prompt`) or "topic" (:func:`split_by_topic`).
    """
    if heldout not in HOLDOUTS:
        raise ValueError(f"heldout={heldout!r}: expected one of {HOLDOUTS}")
    pre, _ = (split_by_prompt if heldout == "prompts" else split_by_topic)(convs)
    order = list(range(len(pre)))
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(valid_frac * len(pre))))
    val = [list(pre[i].turns) for i in order[:n_val]]
    train = [list(pre[i].turns) for i in order[n_val:]]
    return train, val


def finetune_dialogues(path: str | os.PathLike | None = None) -> list[list[str]]:
    """The held-out-prompt conversations as dialogues (lists of turns), in id order."""
    _, fine = split_by_prompt(load_chitchat(path))
    return [list(c.turns) for c in fine]
