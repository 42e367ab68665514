"""Dialogue data: loading, DialoGPT formatting, train / held-out splits, batching.

A dialogue is a list of turns (strings). DialoGPT's format (Zhang et al. 2020): the turns of
a dialogue concatenated, each followed by the end-of-text token,

    x = t₁ ⟨eos⟩ t₂ ⟨eos⟩ … t_k ⟨eos⟩,

trained with next-token cross-entropy on every token. A held-out prompt→response pair is
(t₁ ⟨eos⟩ … t_j ⟨eos⟩ → t_{j+1}); the model's greedy continuation up to the next ⟨eos⟩ is
scored against t_{j+1} with token F1 and exact match (SQuAD normalisation, the metric of the
seed's CoQA comparison).

Sources:
- ``"chitchat"`` (default): the conversations of the eight computer/AI prompts of
  ``chitchat-dataset``, which the default embedded model never saw in pretraining
  (``real_runs.chitchat``); ``"chitchat:<path>"`` reads another file in chitchat's layout.
- ``"chatterbot"``: the English YAML dialogues shipped by ``chatterbot-corpus``.
- a local ``.json`` / ``.jsonl`` / ``.parquet`` file (e.g. DailyDialog's), read with 🤗
  ``datasets``; each row holds a list of turns in one of the columns ``DIALOGUE_COLUMNS``.
- ``"dailydialog"``: ``$QUANTBOUNDS_DAILYDIALOG`` (a local file as above) if set, else the hub
  dataset ``li2017dailydialog/daily_dialog`` (needs network).
"""

from __future__ import annotations

import os
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from quantbounds._checks import check_int_range

DIALOGUE_COLUMNS = ("dialog", "dialogue", "turns", "utterances", "conversation")
DAILYDIALOG_ENV = "QUANTBOUNDS_DAILYDIALOG"
DAILYDIALOG_HUB = "li2017dailydialog/daily_dialog"


class DataError(ValueError):
    """A dataset that is missing, malformed, or too small."""


def load_chatterbot(language: str = "english") -> list[list[str]]:
    """All dialogues of chatterbot-corpus' YAML files for ``language``, in file-name order."""
    import yaml
    from chatterbot_corpus.corpus import DATA_DIRECTORY

    d = Path(DATA_DIRECTORY) / language
    if not d.is_dir():
        raise DataError(f"chatterbot-corpus has no language {language!r} (looked in {d})")
    out = []
    for f in sorted(d.glob("*.yml")):
        doc = yaml.safe_load(f.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations", []):
            # some entries are bare strings or hold non-string scalars: keep string turns only
            if isinstance(conv, list):
                turns = [str(t).strip() for t in conv if isinstance(t, (str, int, float))]
                turns = [t for t in turns if t]
                if len(turns) >= 2:
                    out.append(turns)
    return out


def load_dialogue_file(path: str | os.PathLike) -> list[list[str]]:
    """Dialogues from a local JSON / JSONL / parquet file via ``datasets``.

    Raises FileNotFoundError naming a missing file and DataError naming a malformed one (wrong
    extension, unreadable, no dialogue column, or rows that are not lists of strings).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    ext = path.suffix.lower()
    kind = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(ext)
    if kind is None:
        raise DataError(
            f"dataset file {path}: extension must be .json, .jsonl or .parquet, got {ext!r}"
        )
    import datasets

    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types for unreadable files
        raise DataError(f"dataset file {path} could not be read as {kind}: {err}") from err
    return _dialogues_from_rows(ds, str(path))


def _dialogues_from_rows(ds, where: str) -> list[list[str]]:
    col = next((c for c in DIALOGUE_COLUMNS if c in ds.column_names), None)
    if col is None:
        raise DataError(
            f"dataset {where}: no dialogue column; expected one of {DIALOGUE_COLUMNS}, "
            f"found {ds.column_names}"
        )
    out = []
    for i, turns in enumerate(ds[col]):
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise DataError(f"dataset {where}: row {i} column {col!r} must be a list of strings")
        turns = [t.strip() for t in turns if t.strip()]
        if len(turns) >= 2:
            out.append(turns)
    if not out:
        raise DataError(f"dataset {where}: no dialogue with at least two turns")
    return out


def load_dialogues(name: str) -> list[list[str]]:
    """Dialogues for a dataset spec: "chitchat", "chitchat:<path>", "chatterbot", "dailydialog" or a file path."""
    if name == "chitchat" or name.startswith("chitchat:"):
        from real_runs.chitchat import finetune_dialogues

        d = finetune_dialogues(name.partition(":")[2] or None)
        if not d:
            raise DataError(f"dataset {name!r}: no conversation of the held-out prompts")
        return d
    if name == "chatterbot":
        return load_chatterbot()
    if name == "dailydialog":
        local = os.environ.get(DAILYDIALOG_ENV)
        if local:
            return load_dialogue_file(local)
        import datasets

        try:
            ds = datasets.load_dataset(DAILYDIALOG_HUB, split="train")
        except Exception as err:
            raise DataError(
                f"DailyDialog is not bundled and the hub dataset {DAILYDIALOG_HUB!r} "
                f"could not be loaded ({type(err).__name__}); put its parquet/JSON "
                f"file on disk and pass its path, or set ${DAILYDIALOG_ENV}"
            ) from err
        return _dialogues_from_rows(ds, DAILYDIALOG_HUB)
    if os.sep in name or Path(name).suffix:
        return load_dialogue_file(name)
    raise DataError(
        f"dataset must be 'chitchat', 'chitchat:<path>', 'chatterbot', 'dailydialog' or a "
        f".json/.jsonl/.parquet path, got {name!r}"
    )


def resolve_dataset(name: str) -> str:
    """What a dataset spec resolves to on this machine (enters the run id): a file or directory path,
    or the hub dataset name for "dailydialog" without a local file."""
    if name == "chitchat" or name.startswith("chitchat:"):
        from real_runs.chitchat import chitchat_path

        p = name.partition(":")[2]
        return str(Path(p).resolve() if p else chitchat_path())
    if name == "chatterbot":
        try:
            from chatterbot_corpus.corpus import DATA_DIRECTORY
        except ImportError:
            return "chatterbot_corpus:english"
        return str(Path(DATA_DIRECTORY).resolve() / "english")
    if name == "dailydialog":
        local = os.environ.get(DAILYDIALOG_ENV)
        return str(Path(local).resolve()) if local else f"hub:{DAILYDIALOG_HUB}"
    return str(Path(name).resolve())


# --- portable dataset identity (what enters the run id instead of the path) ------------------

HUB_PREFIX = "hub:"
_DIGEST_CHUNK = 1 << 20  # read files in 1 MiB pieces


def _skipped(name: str) -> bool:
    # hidden files (.DS_Store, .git) and byte-code caches are not data
    return name.startswith(".") or name == "__pycache__"


def digest_dataset(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a dataset's bytes: where it lives does not enter, what it holds does.

    A file: the SHA-256 of its bytes (what ``sha256sum FILE`` prints). A directory (e.g.
    chatterbot's YAML files): one SHA-256 over its regular files in sorted order of their
    relative POSIX paths, each fed as ``relpath ⟨NUL⟩ len(bytes) ⟨NUL⟩ bytes`` — so renaming,
    moving or changing any file changes the digest, and the file boundaries cannot be shifted
    without changing it. Hidden entries (``.*``) and ``__pycache__`` are skipped.

    Raises FileNotFoundError naming a path that is neither a file nor a directory.
    """
    import hashlib

    p = Path(path)
    h = hashlib.sha256()

    def feed(f: Path) -> None:
        with f.open("rb") as fh:
            while chunk := fh.read(_DIGEST_CHUNK):
                h.update(chunk)

    if p.is_file():
        feed(p)
        return h.hexdigest()
    if not p.is_dir():
        raise FileNotFoundError(f"dataset path not found (neither a file nor a directory): {p}")
    files = []
    for root, dirs, names in os.walk(p):
        dirs[:] = [d for d in dirs if not _skipped(d)]
        files += [Path(root) / n for n in names if not _skipped(n)]
    for rel, f in sorted((f.relative_to(p).as_posix(), f) for f in files if f.is_file()):
        h.update(rel.encode("utf-8") + b"\0" + str(f.stat().st_size).encode() + b"\0")
        feed(f)
    return h.hexdigest()


def dataset_loader(name: str, location: str) -> str:
    """How dataset spec ``name`` (read from ``location``, see :func:`resolve_dataset`) is parsed:
    "chitchat" (chitchat's layout, held-out prompts: "chitchat" or "chitchat:<path>"),
    "chatterbot" (its YAML files), "dialogue_file" (a .json/.jsonl/.parquet file, given as a path
    or as ``$QUANTBOUNDS_DAILYDIALOG``), or ``"hub:<name>"`` (a hub dataset, not a local file).
    With the digest of the bytes it says which dialogues a run saw, without a path."""
    if name == "chitchat" or name.startswith("chitchat:"):
        return "chitchat"
    if name == "chatterbot":
        return "chatterbot"
    if location.startswith(HUB_PREFIX):
        return location
    return "dialogue_file"


def dataset_identity(name: str, location: str | None = None) -> dict:
    """The portable identity of dataset spec ``name`` read from ``location`` (default: what it
    resolves to here): ``{"dataset": dataset_loader(...), "dataset_sha256": digest_dataset(location)}``,
    the digest None for a hub dataset (named by its hub id, not held locally). The same bytes at
    two paths give the same identity; one changed byte gives another.

    Raises FileNotFoundError naming a local location that does not exist, DataError for
    chatterbot when chatterbot-corpus is not installed.
    """
    loc = resolve_dataset(name) if location is None else str(location)
    loader = dataset_loader(name, loc)
    if loc.startswith(HUB_PREFIX):
        return {"dataset": loader, "dataset_sha256": None}
    if loc == "chatterbot_corpus:english":
        raise DataError("dataset 'chatterbot' needs the chatterbot-corpus package (not installed)")
    return {"dataset": loader, "dataset_sha256": digest_dataset(loc)}


@dataclass(frozen=True)
class Split:
    """Train dialogues (the first n_train of a seeded shuffle) and held-out dialogues / pairs."""

    train: list[list[str]]
    heldout: list[list[str]]
    pairs: list[tuple[list[str], str]]  # (context turns, response)
    pair_dialogue: list[int] = None  # index into heldout of each pair's dialogue


def split_dialogues(
    dialogues: list[list[str]],
    *,
    n_train: int | None = None,
    heldout_frac: float = 0.1,
    split_seed: int = 1234,
    max_pairs: int = 64,
) -> Split:
    """Deduplicate, shuffle with ``split_seed``, hold out a fraction, keep the first n_train.

    The held-out split depends only on ``split_seed`` (not on n_train or the run's seed), and
    train sets for increasing n_train are nested, so runs at several N share one test set.
    Pairs (t₁…t_j → t_{j+1}), at most ``max_pairs``, spread across the held-out dialogues:
    round k takes, from every held-out dialogue that still has one, its k-th pair in a seeded
    random order of its turns, so pairs come from every held-out dialogue rather than from
    every turn of a few: chitchat's default held-out split (167 of its 835 dialogues at
    ``heldout_frac`` 0.2, 668 left for training) gives 500 pairs from all 167, 3–4 from most and
    fewer only from the 36 dialogues that have fewer pairs (29 with one, 7 with two).
    ``pair_dialogue`` gives each pair's dialogue index.
    """
    if not 0.0 < heldout_frac < 1.0:
        raise ValueError(f"heldout_frac must be in (0, 1), got {heldout_frac!r}")
    check_int_range(max_pairs, "max_pairs", 1)
    uniq = list(dict.fromkeys(tuple(d) for d in dialogues))
    rng = random.Random(split_seed)
    rng.shuffle(uniq)
    n_held = max(1, int(round(heldout_frac * len(uniq))))
    held, train = uniq[:n_held], uniq[n_held:]
    if not train:
        raise DataError(
            f"only {len(uniq)} distinct dialogues: none left for training after holding "
            f"out {n_held}"
        )
    if n_train is not None:
        if n_train < 1 or n_train > len(train):
            raise DataError(
                f"n_train must be in 1…{len(train)} (training dialogues available), got {n_train}"
            )
        train = train[:n_train]
    prng = random.Random(split_seed + 1)
    orders = []
    for d in held:
        js = list(range(1, len(d)))
        prng.shuffle(js)
        orders.append(js)
    pairs, owner = [], []
    k = 0
    while len(pairs) < max_pairs and any(k < len(o) for o in orders):
        for i, (d, o) in enumerate(zip(held, orders)):
            if k < len(o) and len(pairs) < max_pairs:
                j = o[k]
                pairs.append((list(d[:j]), d[j]))
                owner.append(i)
        k += 1
    return Split(
        train=[list(d) for d in train],
        heldout=[list(d) for d in held],
        pairs=pairs,
        pair_dialogue=owner,
    )


def encode_chunks(tok, turns: list[str], *, seq_len: int) -> list[list[int]]:
    """The whole dialogue t₁⟨eos⟩…t_k⟨eos⟩ cut into consecutive windows of ≤ seq_len tokens.

    Every token of the dialogue lands in exactly one window (windows of one token, which predict
    nothing, are dropped), so training and evaluation see whole conversations, not their first
    seq_len tokens.
    """
    ids = encode_dialogue(tok, turns, seq_len=10**12)
    return [
        ids[i : i + seq_len] for i in range(0, len(ids), seq_len) if len(ids[i : i + seq_len]) >= 2
    ]


def encode_dialogue(tok, turns: list[str], *, seq_len: int) -> list[int]:
    """Token ids of t₁⟨eos⟩…t_k⟨eos⟩, truncated to seq_len."""
    ids: list[int] = []
    for t in turns:
        ids.extend(tok(t)["input_ids"])
        ids.append(tok.eos_token_id)
    return ids[:seq_len]


def collate(seqs: list[list[int]], *, pad_id: int):
    """Right-padded batch: input_ids, attention_mask and labels (−100 on padding)."""
    import torch

    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --- token F1 / exact match (SQuAD v1.1 evaluation script's normalisation) -------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (SQuAD)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall of the normalised bags of words.

    Both empty → 1; exactly one empty → 0 (as the SQuAD script does).
    """
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def clustered_mean_ci(values, clusters, *, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of ``values`` with a cluster-robust t interval.

    Observations in one cluster (pairs of one dialogue) are correlated, so the standard error
    is the sandwich one over C clusters: SE² = C/(C−1)·Σ_c (S_c − n_c·x̄)² / n², S_c the
    cluster sums, with t_{C−1} quantiles (the usual CR1 small-sample correction).
    C = 1 gives an infinite interval.
    """
    import math

    from quantbounds.verdicts.intervals import grouped_total

    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        raise ValueError("clustered_mean_ci needs at least one value")
    if len(clusters) != n:
        raise ValueError(f"clusters must have one label per value ({n}), got {len(clusters)}")
    sums: dict = {}
    for v, c in zip(vals, clusters):
        s, k = sums.get(c, (0.0, 0))
        sums[c] = (s + v, k + 1)
    mean = sum(vals) / n
    if len(sums) < 2:
        return mean, -math.inf, math.inf
    # the mean is the total of the clusters' contributions S_c/n: one CR1 formula for both
    g = grouped_total([s / n for s, _ in sums.values()], [k for _, k in sums.values()], level=level)
    return mean, g["ci"][0], g["ci"][1]
