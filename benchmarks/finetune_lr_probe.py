"""Held-out loss of the default embedded fine-tune at several learning rates and lengths.

    python benchmarks/finetune_lr_probe.py LR:STEPS:N [LR:STEPS:N ...] [--embedded M] [--out PATH]

Each spec runs real_runs.finetune.run_finetune with embedded.toml's defaults (r = 8, seed 0,
grad_var_batches 2) but the given lr, steps and n_train, and prints one JSON line: eval loss
and its dialogue-clustered interval, F1, the last logged train losses, wall time. ``1e-12:1:200``
is the base model on the same held-out tokens (the adapter's B starts at 0). Used to choose the
sweep's lr (issue 14): the fine-tuning gain on the held-out computer/AI prompts is small at every
lr, and negative above ≈ 3e-3.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from quantbounds.verdicts.results import write_json_atomic

BASE = dict(model="embedded", embedded="chitchat", dataset="chitchat", scale="alpha_r",
            lora_alpha=16.0, batch_size=8, seq_len=128, n_train=200, grad_var_batches=2,
            eval_pairs=500, eval_tokens=24000, device="cpu", arm="fp16", bits=16, rank=8, seed=0)


def probe(spec: str, embedded: str = "chitchat") -> dict:
    from real_runs.finetune import run_finetune

    try:
        lr, steps, n = spec.split(":")
        lr, steps, n = float(lr), int(steps), int(n)
    except ValueError as err:
        raise SystemExit(f"spec must be LR:STEPS:N (e.g. 1e-3:120:200), got {spec!r}") from err
    t = time.time()
    r = run_finetune({**BASE, "embedded": embedded, "lr": lr, "steps": steps, "n_train": n})
    return dict(embedded=embedded, lr=lr, steps=steps, n=n, eval_loss=r["eval_loss"],
                ci=r["eval_loss_ci"],
                f1=r["f1"], train_loss=r["train_loss"][-3:], wall=time.time() - t,
                gain=r.get("finetune_gain"), gain_ci=r.get("finetune_gain_ci"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--out", default=None)
    ap.add_argument("--embedded", default="chitchat",
                    help="embedded model (default chitchat: the sweep's lr was chosen on it)")
    a = ap.parse_args(argv)
    rows = []
    for spec in a.specs:
        rows.append(probe(spec, a.embedded))
        print(json.dumps(rows[-1]), flush=True)
    if a.out:
        write_json_atomic(a.out, {"command": "python benchmarks/finetune_lr_probe.py "
                                  + " ".join(a.specs) + f" --embedded {a.embedded}",
                                  "rows": rows, "method": __doc__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
