"""Benchmark of activation tracking on an OPT-125m-shaped decoder: eager and compiled, with token masks.

    python benchmarks/llm.py [--batch 2] [--length 512] [--reps 3] [--quick] [--device cpu]

An OPT decoder with OPT-125m's shape (12 layers, width 768, FFN 3072, 12 heads; Hugging Face ``OPTModel``,
random weights, no LM head), eval mode, no_grad, batches of right-padded sequences of ``--length`` tokens
(a quarter of each row's positions, on average, are padding). Timed in one run, round-robin, medians after
warm-up:

- plain eager forward;
- eager forward under ``pozfast.track_apoz`` with the batch's attention mask (1 threshold, and 4);
- eager forward with the usual masked counting hooks (``((out == 0) & mask).sum`` per ReLU module);
- ``torch.compile`` plain forward, and compiled forward under tracking (1 and 4 thresholds);
- the masked counting kernels alone, 1 and 4 thresholds, on an FFN activation, times the number of layers
  (what the thresholds cost, measured without the forward's noise).

Compile times: each compiled variant in a fresh process (inductor's FX graph cache off), its first compiled
call minus its second. Counts of every method are checked equal before timing. tokens/s counts every position
the model computes (padding included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._timing import machine_description, median_seconds, print_table  # noqa: E402

import pozfast  # noqa: E402

FULL = dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12)
QUICK = dict(hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4)
THRESHOLDS = {1: (0.0,), 4: (0.0, 0.01, 0.1, 0.5)}


def opt_decoder(shape: dict, length: int, device: str) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.OPTConfig(vocab_size=1024, max_position_embeddings=max(2048, length),
                                 word_embed_proj_dim=shape["hidden_size"], **shape)
    return transformers.OPTModel(cfg).eval().to(device)


def padded_batches(count: int, batch: int, length: int, device: str) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(3, 1024, (batch, length), generator=gen)
        real = torch.randint(length // 2, length + 1, (batch,), generator=gen)
        mask = (torch.arange(length)[None, :] < real[:, None]).long()
        out.append({"input_ids": ids.to(device), "attention_mask": mask.to(device)})
    return out


def masked_hooks(model: nn.Module, counts: dict, batch: dict) -> list:
    """The usual approach: a forward hook per ReLU module summing ((out == 0) & mask) over the token rows."""
    def make(name):
        def hook(mod, args, out):
            rows = batch["attention_mask"].reshape(-1, 1).bool()  # OPT's FFN runs on (N*L, F) rows
            z = ((out == 0) & rows).sum(0)
            counts[name] = counts[name] + z if name in counts else z
        return hook

    return [m.register_forward_hook(make(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]


def counting_kernels(model: nn.Module, batch: dict, reps: int) -> dict[str, float]:
    """The masked counting of every FFN activation of one forward alone (the kernels the tracker runs on
    them, on one layer's activation times the number of layers): its share of a forward is what the
    thresholds cost, without the forward's own run-to-run noise."""
    from pozfast.ops.near_zero import near_zero_count_

    cfg = model.config
    rows = batch["input_ids"].numel()
    act = torch.relu(torch.randn(rows, cfg.ffn_dim, generator=torch.Generator().manual_seed(2))).to(
        batch["input_ids"].device)
    mask = batch["attention_mask"].reshape(-1)  # OPT flattens tokens: (N*L, F) rows
    counters = {t: torch.zeros(len(THRESHOLDS[t]), cfg.ffn_dim, dtype=torch.int64, device=act.device)
                for t in THRESHOLDS}
    fns = {t: (lambda t: lambda: near_zero_count_(counters[t], act, THRESHOLDS[t], -1, mask))(t) for t in THRESHOLDS}
    kernel = median_seconds(fns, reps=max(reps, 20), warmup=3)
    return {f"counting kernels alone, {t} threshold{'s' if t > 1 else ''}": kernel[t] * cfg.num_hidden_layers
            for t in THRESHOLDS}


COMPILE_VARIANTS = {"compiled plain": "plain", "compiled, tracking, 1 threshold": "1",
                    "compiled, tracking, 4 thresholds": "4"}


def compile_seconds(variant: str, argv: list[str] | None) -> float:
    """The compile time of one variant, measured in a fresh process (no compiled code or warm caches shared)."""
    argv = [a for a in (sys.argv[1:] if argv is None else argv)]
    out = subprocess.run([sys.executable, __file__, *argv, "--compile-time-of", variant], capture_output=True,
                         text=True, check=True).stdout
    return float(out.rsplit("compile seconds:", 1)[1].split()[0])


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--batches", type=int, default=2, help="distinct batches, used in turn")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a 2-layer, width-64 model on 32 tokens (smoke test)")
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--compile-time-of", choices=["plain", "1", "4"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.length = min(args.length, 32)
    torch._inductor.config.fx_graph_cache = False  # compile times from scratch
    model = opt_decoder(QUICK if args.quick else FULL, args.length, args.device)
    batches = padded_batches(args.batches, args.batch, args.length, args.device)
    turn = {"i": 0}

    def next_batch() -> dict:
        turn["i"] += 1
        return batches[turn["i"] % len(batches)]

    # The same counts from the hooks and from pozfast, checked before timing.
    counts: dict = {}
    handles = masked_hooks(model, counts, batches[0])
    with torch.no_grad():
        model(**batches[0])
    for h in handles:
        h.remove()
    report = pozfast.apoz(model, batches[:1], progress=False)
    assert report.layers == list(counts) and all(torch.equal(report[k].zeros, counts[k].cpu()) for k in counts)

    trackers = {t: pozfast.track_apoz(model, thresholds=THRESHOLDS[t]) for t in THRESHOLDS}

    def tracked(fn, tracker):
        def run():
            with tracker:
                fn(**next_batch())
        return run

    def hooked():
        batch = next_batch()
        handles = masked_hooks(model, {}, batch)
        model(**batch)
        for h in handles:
            h.remove()

    fns = {"plain forward": lambda: model(**next_batch()),
           "tracking, mask, 1 threshold": tracked(model, trackers[1]),
           "tracking, mask, 4 thresholds": tracked(model, trackers[4]),
           "masked counting hooks": hooked}
    compile_s = {}
    if not args.no_compile:
        compiled = torch.compile(model)
        c_trackers = {t: pozfast.track_apoz(compiled, thresholds=THRESHOLDS[t]) for t in THRESHOLDS}
        with torch.no_grad():
            for tracker in c_trackers.values():  # the first tracked forward runs eagerly (finds the sites)
                with tracker:
                    model(**batches[0])
        fns.update({"compiled plain forward": lambda: compiled(**next_batch()),
                    "compiled, tracking, mask, 1 threshold": tracked(compiled, c_trackers[1]),
                    "compiled, tracking, mask, 4 thresholds": tracked(compiled, c_trackers[4])})
        if not args.compile_time_of:
            compile_s = {name: compile_seconds(variant, argv) for name, variant in COMPILE_VARIANTS.items()}
        else:
            fn = fns[{"plain": "compiled plain forward", "1": "compiled, tracking, mask, 1 threshold",
                      "4": "compiled, tracking, mask, 4 thresholds"}[args.compile_time_of]]
            with torch.no_grad():
                start = time.perf_counter()
                fn()
                first = time.perf_counter() - start
                start = time.perf_counter()
                fn()
            print(f"compile seconds: {first - (time.perf_counter() - start):.3f}")
            return ""
    with torch.no_grad():
        times = median_seconds(fns, reps=args.reps, warmup=1)
    times.update(counting_kernels(model, batches[0], args.reps))
    tokens = args.batch * args.length
    base, c_base = times["plain forward"], times.get("compiled plain forward")
    rows = []
    for name, t in times.items():
        compiled_row = name.startswith("compiled")
        ref = c_base if compiled_row else base
        rows.append([name, f"{t * 1e3:.0f}", f"{tokens / t:.0f}", f"{t / ref:.3f}",
                     f"{t / base:.3f}"])
    shape = "2 layers, width 64, FFN 256" if args.quick else "12 layers, width 768, FFN 3072"
    print(f"machine: {machine_description()}")
    print(f"OPT-125m-shaped decoder ({shape}), {args.batch} x {args.length} right-padded tokens per batch, "
          f"{report.tokens} real of {tokens} in the first; median of {args.reps}")
    table = print_table(["method", "ms / batch", "tokens/s", "time / its plain", "time / eager plain"], rows)
    if compile_s:
        crows = [[k, f"{v:.1f}", f"{v / compile_s['compiled plain']:.2f}"] for k, v in compile_s.items()]
        table += "\n" + print_table(["compile, fresh process (first call - second call)", "seconds",
                                      "/ compiled plain"], crows)
    return table


if __name__ == "__main__":
    main()
