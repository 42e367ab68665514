"""Held-out loss, perplexity and greedy F1 of the embedded models, before and after a default fine-tune.

    python -m real_runs.compare_embedded [--models chitchat-topic chitchat pydoc] [--out results/embedded_comparison.json]

Models not named keep their entries of an existing output file (each entry names its command).

For each embedded model: (1) with no fine-tuning, the held-out loss / perplexity on the default
fine-tuning evaluation (the held-out conversations of the eight computer/AI prompts, ≥ 24k
tokens, whole dialogues; the zero-shot loss on the same first 40 held-out dialogues for every
model, also in nats per whitespace word, since the models' tokenizers differ) and greedy F1 / exact match on the 500 held-out prompt→response pairs,
each with its 95 % interval clustered by dialogue; (2) the same after one default fp16 LoRA
fine-tune (``FinetuneConfig()`` defaults but the model). One torch thread. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def zero_shot(
    name: str,
    *,
    eval_dialogues: int = 40,
    eval_pairs: int = 500,
    seq_len: int = 128,
    max_new_tokens: int = 20,
) -> dict:
    import torch

    from real_runs import measure as M
    from real_runs.data import clustered_mean_ci, collate, encode_chunks
    from real_runs.embedded import EmbeddedConfig, load_embedded, resolve_embedded
    from real_runs.finetune import load_split

    torch.set_num_threads(1)
    which = {"pydoc": EmbeddedConfig(), "tiny": EmbeddedConfig.tiny()}.get(name, name)
    model, tok = load_embedded(which)
    model.eval()
    split, path = load_split("chitchat", None, eval_pairs)
    L = min(seq_len, model.config.n_positions)
    seqs, owner, n = [], [], 0
    # the same first ``eval_dialogues`` held-out dialogues for every model (tokenizers differ)
    for i, d in enumerate(split.heldout[:eval_dialogues]):
        for w in encode_chunks(tok, d, seq_len=L):
            seqs.append(w)
            owner.append(i)
            n += len(w) - 1
    batches = [collate(seqs[i : i + 16], pad_id=tok.eos_token_id) for i in range(0, len(seqs), 16)]
    s, c = M.eval_loss_rows(model, batches)
    loss = sum(s) / sum(c)
    W = len(c)
    _, lo, hi = clustered_mean_ci([x * W / sum(c) for x in s], owner)
    f1, em, outs, f1s, ems = M.greedy_scores(
        model,
        tok,
        split.pairs,
        max_new_tokens=max_new_tokens,
        max_prompt=L - max_new_tokens,
        return_lists=True,
    )
    r = resolve_embedded(which)
    words = sum(len(t.split()) for d in split.heldout[:eval_dialogues] for t in d)
    return {
        "model": r.name,
        "key": r.key,
        "corpus": r.corpus,
        "eval_loss": loss,
        "eval_dialogues": eval_dialogues,
        "eval_words": words,
        "nats_per_word": sum(s) / words,
        "eval_loss_ci": [lo, hi],
        "perplexity": M.perplexity(loss),
        "eval_tokens": int(sum(c)),
        "f1": f1,
        "f1_ci": list(clustered_mean_ci(f1s, split.pair_dialogue)[1:]),
        "exact_match": em,
        "exact_match_ci": list(clustered_mean_ci(ems, split.pair_dialogue)[1:]),
        "pairs": len(split.pairs),
        "pair_dialogues": len(set(split.pair_dialogue)),
        "examples": [
            {"context_last": p[0][-1], "reference": p[1], "response": o}
            for p, o in list(zip(split.pairs, outs))[:5]
        ],
    }


def fine_tuned(name: str) -> dict:
    from real_runs.finetune import FinetuneConfig, run_finetune

    rec = run_finetune(FinetuneConfig(embedded=name, progress=False))
    keep = (
        "run_id",
        "eval_loss",
        "eval_loss_ci",
        "perplexity",
        "eval_nats_per_word",
        "eval_words",
        "f1",
        "f1_ci",
        "exact_match",
        "exact_match_ci",
        "eval_tokens",
        "eval_pairs_scored",
        "n_train",
        "steps",
        "wall_s",
        "peak_mem_bytes",
        "embedded_key",
    )
    return {k: rec[k] for k in keep}


def main(argv=None) -> int:
    from quantbounds.verdicts.results import write_json_atomic

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["chitchat-topic", "chitchat", "pydoc"])
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--out", default="results/embedded_comparison.json")
    a = ap.parse_args(argv)
    command = "python -m real_runs.compare_embedded " + " ".join(argv or sys.argv[1:])
    # the other models' entries of an existing file are kept (each says which command made it)
    res = {"command": command, "models": {}}
    if Path(a.out).is_file():
        old = json.loads(Path(a.out).read_text())
        for m, e in (old.get("models") or {}).items():
            if m not in a.models:
                res["models"][m] = {"command": e.get("command", old.get("command")), **e}
    for m in a.models:
        t0 = time.time()
        entry = {"command": command, "zero_shot": zero_shot(m)}
        if not a.no_finetune:
            entry["fine_tuned"] = fine_tuned(m)
        entry["wall_s"] = time.time() - t0
        res["models"][m] = entry
        print(
            json.dumps(
                {
                    m: {
                        k: {
                            kk: v.get(kk) for kk in ("eval_loss", "perplexity", "f1", "exact_match")
                        }
                        for k, v in entry.items()
                        if isinstance(v, dict)
                    }
                }
            ),
            flush=True,
        )
        write_json_atomic(a.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
