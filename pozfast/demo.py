"""``pozfast demo``: the whole workflow on scikit-learn's bundled handwritten digits.

Train a small VGG-style ReLU CNN; measure APoZ on the validation split; remove the dead channels (APoZ
exactly 100 %) without changing the outputs; trim the last conv layer and the first FC layer for several rounds with fine-tuning (the paper's Table 4); insertion curves of the
first FC layer's features ordered by PoZ (the deck's figures); a report.md with tables and plots and a
results.json with every number. Seeded: two runs give the same tables.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from pozfast import digits, prune, tables
from pozfast._io import atomic_write_text, fresh_folder, json_text
from pozfast.apoz import apoz
from pozfast.geometry import insertion_curve

TRIM_LAYERS = ["features.1.3", "fc1"]  # the last conv layer and FC1 (the paper's CONV5-3 and FC6)
FC_KEY = "relu1"
DECK = {"R2 at 25% (low to high)": 0.90, "R2 at 50% (low to high)": 0.98, "R2 from top-20% PoZ (high to low)": 0.6}


def run(out: str | Path = "pozfast-demo", *, epochs: int = 12, rounds: int = 3, fine_tune_epochs: int = 2,
        rule: prune.Rule = prune.Rule("std", 1.0, min_keep=0.25), steps: int = 40, seed: int = 0,
        progress: bool = True) -> dict:
    """Run the demo into ``out``; returns every number (also written to results.json).

    The files are written into a new folder beside ``out`` that replaces it when the run completes, so
    ``out`` always holds the files of one complete run (an interrupted rerun leaves the old one).
    """
    start, final = time.monotonic(), Path(out)
    with fresh_folder(final) as out:
        results = _run(out, epochs=epochs, rounds=rounds, fine_tune_epochs=fine_tune_epochs, rule=rule, steps=steps,
                       seed=seed, progress=progress)
    if progress:
        print(f"\nwrote {final / 'report.md'} (tables and plots) and {final / 'results.json'} (every number) "
              f"in {time.monotonic() - start:.0f} s")
    return results


def _run(out: Path, *, epochs: int, rounds: int, fine_tune_epochs: int, rule: prune.Rule, steps: int, seed: int,
         progress: bool) -> dict:
    torch.manual_seed(seed)
    train_set, val_set = digits.load_digits_split(seed=seed)
    train = DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(val_set, batch_size=256)

    say = print if progress else (lambda *a, **k: None)
    say(f"1. training a VGG-style CNN on {len(train_set)} digits ({epochs} epochs)", flush=True)
    model = digits.DigitsCNN()
    digits.train_epochs(model, train, epochs)
    top1, top5 = prune.evaluate(model, val, torch.device("cpu"))
    say(f"   validation top-1 {100 * top1:.2f}% on {len(val_set)} images")

    say("2. APoZ on the validation split", flush=True)
    report = apoz(model, val, progress=False)
    report.save(out / "apoz.json")
    report.plot_histogram(FC_KEY, out / "apoz_fc1.png")
    report.plot_overview(out / "apoz_layers.png")
    say(report.summary())

    say("3. removing the dead channels (APoZ exactly 100 % on the validation split), outputs unchanged", flush=True)
    lean = copy.deepcopy(model)
    dead = prune.remove_dead(lean, report, next(iter(val)))
    top1_dead, _ = prune.evaluate(lean, val)
    dead_text = _dead_text(dead, top1, top1_dead)
    say(dead_text)

    say(f"4. trimming {' and '.join(TRIM_LAYERS)} for {rounds} rounds, rule {rule}", flush=True)
    trimmed = prune.trim(lean, train, val, layers=TRIM_LAYERS, rule=rule, rounds=rounds,
                         fine_tune_epochs=fine_tune_epochs, seed=seed, progress=False)
    trimmed.save(out)
    prune.save_model(trimmed.model, out, next(iter(val))[0])
    table = trimmed.table()
    say(table)

    say("5. representational geometry of the FC1 features (insertion curves, R^2 with the full RDM)", flush=True)
    acts = _fc1_activations(model, val)
    poz = report[FC_KEY].apoz
    low = insertion_curve(acts, poz, order="low_to_high", steps=steps, method="r2")
    high = insertion_curve(acts, poz, order="high_to_low", steps=steps, method="r2")
    low.plot(out / "insertion_curves.png", others=[high])
    ours = {"R2 at 25% (low to high)": low.value_at(0.25), "R2 at 50% (low to high)": low.value_at(0.5),
            "R2 from top-20% PoZ (high to low)": high.value_at(0.2)}
    geometry = _geometry_table(ours, poz)
    say(geometry)

    results = {
        "seed": seed, "train_items": len(train_set), "val_items": len(val_set),
        "accuracy": {"top1": top1, "top5": top5},
        "apoz": {e.key: {"channels": e.channels, "mean": float(e.apoz.mean()), "apoz": e.apoz.tolist()} for e in report},
        "dead": {**dead.to_json(), "top1_before": top1, "top1_after": top1_dead},
        "trim": trimmed.to_json(), "rule": vars(rule) if hasattr(rule, "__dict__") else str(rule),
        "curves": {"low_to_high": low.to_dict(), "high_to_low": high.to_dict()},
        "geometry": {"demo": ours, "deck": DECK},
    }
    atomic_write_text(out / "results.json", json_text(results))
    atomic_write_text(out / "report.md", _report_md(report.summary(), dead_text, table, geometry, top1, rule, rounds,
                                                     len(train_set), len(val_set)))
    return results


def _fc1_activations(model: torch.nn.Module, val: DataLoader) -> torch.Tensor:
    """The first FC layer's ReLU outputs over the validation items, (N, 256)."""
    feats = []
    hook = model.relu1.register_forward_hook(lambda m, a, o: feats.append(o.detach().clone()))
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in val:
                model(x)
    finally:
        hook.remove()
    return torch.cat(feats)


def _geometry_table(ours: dict, poz: torch.Tensor) -> str:
    top20 = torch.sort(poz, descending=True).values[: max(1, round(0.2 * poz.numel()))]
    rows = [[k, f"{'> ' if 'top-20' in k else ''}{DECK[k]:.2f}", f"{v:.3f}"] for k, v in ours.items()]
    rows.append(["lowest PoZ among the top-20% features", ">= 55%", f"{100 * float(top20.min()):.0f}%"])
    rows.append(["top-20% features that never fire (PoZ = 100%)", "", f"{int((top20 == 1).sum())} of {top20.numel()}"])
    return tables.markdown(["measure", "deck (CIFAR-10)", "this demo (digits)"], rows)


def _dead_text(dead: prune.DeadRemoval, top1_before: float, top1_after: float) -> str:
    per_layer = ", ".join(f"{layer}: {len(idx)}" for layer, idx in dead.removed.items()) or "none"
    return (f"dead channels removed: {dead.channels} ({per_layer})\n"
            f"parameters {dead.params_before} -> {dead.params_after}: {dead.compression:.3f}x compression for free\n"
            f"validation top-1 {100 * top1_before:.2f}% before, {100 * top1_after:.2f}% after; largest change of "
            f"the logits {dead.max_abs_change:.2g} (relative {dead.max_rel_change:.2g})")


def _report_md(summary: str, dead: str, table: str, geometry: str, top1: float, rule, rounds: int, n_train: int,
               n_val: int) -> str:
    return f"""# pozfast demo: network trimming and representational geometry on handwritten digits

Data: scikit-learn's bundled 8x8 handwritten digits, {n_train} training and {n_val} validation images
(fixed, seeded split). Model: a VGG-style CNN (two conv blocks with BatchNorm, then two fully connected
ReLU layers), trained to {100 * top1:.2f}% validation top-1.

## APoZ per layer (validation split)

```
{summary}
```

![APoZ of the first FC layer](apoz_fc1.png)

![APoZ of every layer](apoz_layers.png)

## Dead channels removed first (exact: constants folded into the next biases)

```
{dead}
```

## Trimming the last conv layer and FC1 ({rounds} rounds, {rule})

Compression rate = parameters of the whole network before trimming / after (biases included); round 0
is the model after the dead channels were removed.

{table}

## Insertion curves of the FC1 features by PoZ (R² with the full-feature RDM)

R² is the squared Pearson correlation between the upper triangles of the partial-feature RDM and the
full-feature RDM (RDM = 1 - Pearson r between items).

![insertion curves](insertion_curves.png)

{geometry}
"""
