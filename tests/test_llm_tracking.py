"""Tracking of large-model activations: token masks, every activation kind, several thresholds, compiled models,
dead neurons, frequency files and int64 counts past 2^31, against hook references counted in float64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import pozfast
from pozfast.sites import all_reduce_sites
from tests import hf_models as hf
from tests import models
from tests.reference import near_zero_reference

# Exact in every float dtype, so that a float64 reference compares as the kernels do in the activation's dtype.
THRESHOLDS = (0.0, 2.0 ** -7, 2.0 ** -4, 0.25, 1.0)


def hook_reference(model: nn.Module, batches: list[dict], names: list[str], masked: bool = True) -> dict:
    """Per module name: float64 counts [T, C] of |out| <= tau over the unmasked tokens, elements per channel,
    tokens and sequences, from forward hooks on those (activation) modules."""
    modules = dict(model.named_modules())
    found: dict = {n: {"counts": 0, "total": 0, "tokens": 0, "examples": 0} for n in names}
    mask = None

    def make(name):
        def hook(mod, args, out):
            out = out.detach().double()
            n, length = mask.shape
            rows = mask if out.dim() == 3 else mask.reshape(-1)  # (N, L, C) or OPT's (N*L, C)
            keep = rows if masked else None
            entry = found[name]
            entry["counts"] = entry["counts"] + near_zero_reference(out, THRESHOLDS, -1, keep)
            entry["total"] += int(rows.count_nonzero()) if masked else out.numel() // out.shape[-1]
            entry["tokens"] += int(rows.count_nonzero()) if masked else 0
            entry["examples"] += n if masked else out.shape[0]
        return hook

    handles = [modules[n].register_forward_hook(make(n)) for n in names]
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"]
            model(**batch)
    for h in handles:
        h.remove()
    return found


LLMS = {  # model, activation kind, its activation modules
    "opt-relu": (hf.opt, None, [f"model.decoder.layers.{i}.activation_fn" for i in range(2)]),
    "gpt2-gelu_new": (hf.gpt2, "gelu", [f"transformer.h.{i}.mlp.act" for i in range(2)]),
    "bert-gelu": (hf.bert_gelu, "gelu", [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(2)]),
    "llama-silu": (hf.llama, "silu", [f"model.layers.{i}.mlp.act_fn" for i in range(2)]),
}


def check_against(report: pozfast.APoZReport, expected: dict, masked: bool = True) -> None:
    assert report.layers == list(expected) and report.thresholds == THRESHOLDS
    for key, ref in expected.items():
        e = report[key]
        assert e.counts.dtype == torch.int64 and torch.equal(e.counts, ref["counts"]), key
        assert (e.total, e.tokens, e.examples, e.masked) == (ref["total"], ref["tokens"], ref["examples"], masked)
        for t, tau in enumerate(THRESHOLDS):
            assert torch.equal(e.fraction(tau), ref["counts"][t].double() / ref["total"])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("llm", list(LLMS))
def test_padded_llm_batches_count_only_real_tokens_at_every_threshold(llm, side):
    build, kind, names = LLMS[llm]
    model = build()
    batches = [hf.padded_batch(seed=0, side=side), hf.padded_batch(n=2, seed=1, pads=(0, 7), side=side)]
    report = pozfast.apoz(model, batches, progress=False, activations=kind, thresholds=THRESHOLDS)
    expected = hook_reference(model, batches, names)
    check_against(report, expected)
    assert report.tokens == 24 + 13 and report.sequences == 5 and report.masked_layers == names
    assert report[names[0]].kind == (kind or "relu")
    whole = pozfast.apoz(model, batches, progress=False, activations=kind, thresholds=THRESHOLDS, token_mask=None)
    check_against(whole, hook_reference(model, batches, names, masked=False), masked=False)
    assert any(not torch.equal(whole[k].counts, report[k].counts) for k in names)  # padding changes the counts


def test_user_loop_masks_from_the_attention_mask_argument_or_set_token_mask():
    model = hf.llama()
    batches = [hf.padded_batch(seed=0), hf.padded_batch(seed=1, side="right")]
    names = LLMS["llama-silu"][2]
    expected = hook_reference(model, batches, names)
    with torch.no_grad(), pozfast.track_apoz(model, activations="silu", thresholds=THRESHOLDS) as auto:
        for b in batches:
            model(**b)
    check_against(auto.report(), expected)
    with torch.no_grad(), pozfast.track_apoz(model, activations="silu", thresholds=THRESHOLDS,
                                             token_mask=None) as explicit:
        for b in batches:
            explicit.set_token_mask(b["attention_mask"].bool())
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    check_against(explicit.report(), expected)
    assert auto.batches == explicit.batches == 2


class EveryKind(nn.Module):
    """Every tracked activation kind, as modules and functional calls; ``record`` keeps each output."""

    def __init__(self):
        super().__init__()
        acts = hf.transformers.activations
        self.fc = nn.Linear(6, 12)
        self.relu6 = nn.ReLU6()
        self.gelu_tanh = nn.GELU(approximate="tanh")
        self.silu = nn.SiLU()
        self.quick = acts.QuickGELUActivation()
        self.fast = acts.FastGELUActivation()
        self.relu2 = acts.ReLUSquaredActivation()  # calls F.relu inside: counted once, as relu2
        self.record: list = []

    def _keep(self, t):
        self.record.append(t.detach().double())
        return t

    def forward(self, x):
        h = self.fc(x)
        outs = [self.relu6(h * 4), self.gelu_tanh(h), self.silu(h), self.quick(h), self.fast(h), self.relu2(h),
                F.gelu(h), F.gelu(h, approximate="tanh"), F.silu(h), F.relu6(h * 4), torch.relu(h)]
        return sum(self._keep(o) for o in outs)


def test_every_activation_kind_as_module_and_functional_call():
    torch.manual_seed(0)
    model = EveryKind().eval()
    xs = [torch.randn(5, 3, 6), torch.randn(2, 4, 6)]
    report = pozfast.apoz(model, xs, progress=False, activations="all", thresholds=THRESHOLDS)
    keys = ["relu6", "gelu_tanh", "silu", "quick", "fast", "relu2", "<root>:0", "<root>:1", "<root>:2",
            "<root>:3", "<root>:4"]
    kinds = ["relu6", "gelu", "silu", "gelu", "gelu", "relu2", "gelu", "gelu", "silu", "relu6", "relu"]
    assert report.layers == keys and [report[k].kind for k in keys] == kinds
    per_batch = len(model.record) // len(xs)
    for i, key in enumerate(keys):
        outs = [model.record[b * per_batch + i] for b in range(len(xs))]
        expected = sum(near_zero_reference(o, THRESHOLDS, -1) for o in outs)
        assert torch.equal(report[key].counts, expected), key
        assert report[key].total == 15 + 8 and report[key].channel_dim == 2
    only_gelu = pozfast.apoz(model, xs, progress=False, activations=["gelu"])
    assert only_gelu.layers == ["gelu_tanh", "quick", "fast", "<root>:0", "<root>:1"]
    default = pozfast.apoz(model, xs, progress=False)  # ReLU only: the F.relu inside ReLUSquared counts as relu
    assert default.layers == ["relu2", "<root>"]


class FeedForward(nn.Module):
    """A transformer FFN on token activations (N, L, C) with GELU, and on flattened rows (N*L, C) with ReLU."""

    def __init__(self, d: int = 8, hidden: int = 16):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.act = nn.GELU()
        self.down = nn.Linear(hidden, d)
        self.up2 = nn.Linear(d, hidden)
        self.down2 = nn.Linear(hidden, d)

    def forward(self, x, attention_mask=None):
        x = x + self.down(self.act(self.up(x)))
        rows = x.reshape(-1, x.shape[-1])
        return x + self.down2(F.relu(self.up2(rows))).reshape(x.shape)


@pytest.mark.parametrize("fullgraph", [False, True])
def test_compiled_model_counts_as_eager_without_graph_breaks(fullgraph):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = FeedForward().eval()
    gen = torch.Generator().manual_seed(1)
    batches = [{"x": torch.randn(3, 5, 8, generator=gen), "attention_mask": (torch.rand(3, 5, generator=gen) > 0.3)}
               for _ in range(3)]
    options = dict(progress=False, activations=["gelu", "relu"], thresholds=THRESHOLDS)
    eager = pozfast.apoz(model, batches, **options)
    assert eager.masked_layers == ["act", "<root>"]
    compiled = torch.compile(model, fullgraph=fullgraph)
    torch._dynamo.utils.counters.clear()
    for _ in range(3):  # a new tracker each time: no recompilation after the first
        report = pozfast.apoz(compiled, batches, **options)
        for key in eager.layers:
            assert torch.equal(report[key].counts, eager[key].counts), key
            assert (report[key].total, report[key].tokens) == (eager[key].total, eager[key].tokens)
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2  # the forward, the root's end hook


def test_compiled_resnet_counts_as_eager():
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = models.ResNetish().eval()
    xs = [torch.randn(4, 3, 7, 9) for _ in range(3)]
    eager = pozfast.apoz(model, xs, progress=False, thresholds=THRESHOLDS)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        plain = compiled(xs[0])
    report = pozfast.apoz(compiled, xs, progress=False, thresholds=THRESHOLDS)
    assert report.layers == eager.layers
    for key in eager.layers:
        assert torch.equal(report[key].counts, eager[key].counts) and report[key].producers == eager[key].producers
    with torch.no_grad():
        assert torch.equal(compiled(xs[0]), plain)  # untracked again: no hook or mode left behind


def test_dead_neurons_threshold_for_and_summary():
    model = nn.Sequential(nn.Linear(4, 3), nn.GELU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-3.0, 0.05, 2.0]))  # gelu: -0.004, 0.026, 1.95
    report = pozfast.apoz(model, [torch.randn(7, 4)], progress=False, activations="gelu", thresholds=(0.0, 0.01, 0.1))
    e = report["1"]
    assert e.dead(0.01).tolist() == [0] and e.dead(0.1).tolist() == [0, 1] and report.dead()["1"].tolist() == []
    assert report.threshold_for("1", 0.3) == 0.01 and report.threshold_for("1", 0.6) == 0.1
    assert report.threshold_for("1", 0.9) is None
    assert e.active(0.01).tolist() == [0, 7, 7]
    summary = report.summary().splitlines()
    assert summary[0].split()[4:7] == ["mean", "APoZ", ">50%"] and summary[-1].split()[-2:] == ["0.0%", "0"]
    with pytest.raises(ValueError, match=r"tau=0.5 was not recorded for '1'; recorded thresholds: \[0.0, 0.01, 0.1\]"):
        report.dead(0.5)


def test_save_frequencies_in_powerinfer_form(tmp_path):
    model = hf.opt()
    batches = [hf.padded_batch(seed=0), hf.padded_batch(seed=1, side="right")]
    report = pozfast.apoz(model, batches, progress=False, thresholds=THRESHOLDS)
    folder = report.save_frequencies(tmp_path / "freq", tau=2.0 ** -7)
    index = json.loads((folder / "frequencies.json").read_text())
    assert index["format"] == "pozfast-activation-frequencies" and index["tau"] == 2.0 ** -7
    assert [d["key"] for d in index["layers"]] == report.layers
    for i, key in enumerate(report.layers):
        freq = torch.load(folder / f"activation_{i}.pt")  # as powerinfer/solver.py loads it
        e = report[key]
        assert freq.dtype == torch.int64 and freq.shape == (e.channels,)
        assert torch.equal(freq, e.total - e.counts[THRESHOLDS.index(2.0 ** -7)])
        assert index["layers"][i] == {"index": i, "file": f"activation_{i}.pt", "key": key, "kind": "relu",
                                      "channels": 32, "tokens": 48, "masked": True}
        sorted_freq, _ = torch.sort(freq, descending=True)  # the solver's next steps
        assert (sorted_freq * -1.0).view(-1, 8).sum(dim=1).shape == (4,)
    with pytest.raises(ValueError, match="tau=0.5 was not recorded"):
        report.save_frequencies(tmp_path / "none", tau=0.5)
    assert not (tmp_path / "none").exists()


BIG = 2 ** 31 + 12345  # past int32


def _tracker_with_big_counts() -> pozfast.APoZTracker:
    model = models.mlp().eval()
    tracker = pozfast.track_apoz(model, thresholds=(0.0, 0.5))
    with torch.no_grad(), tracker:
        model(torch.randn(4, 10))
    state = tracker.state_dict()
    for s in state["sites"]:
        s["counts"] += BIG
        s["seen"] += torch.tensor([BIG * 2, BIG, 0])
    tracker.load_state_dict(state)
    return tracker


def test_counts_past_2_to_the_31_survive_save_and_load(tmp_path):
    report = _tracker_with_big_counts().report()
    loaded = pozfast.APoZReport.load(report.save(tmp_path / "big.json"))
    assert loaded.thresholds == (0.0, 0.5)
    for key in report.layers:
        assert torch.equal(loaded[key].counts, report[key].counts) and int(loaded[key].counts.min()) >= BIG
        assert loaded[key].total == report[key].total > 2 * BIG


def _big_counts_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        tracker = _tracker_with_big_counts()
        summed = all_reduce_sites(tracker._sites, tracker.thresholds)
        torch.save({"local": {k: (s.counts, s.seen_all()) for k, s in tracker._sites.items()},
                    "summed": {k: (s.counts, s.seen_all()) for k, s in summed.items()}}, Path(out_dir) / f"rank{rank}.pt")
        tracker.report().save(Path(out_dir) / f"rank{rank}.json")
    finally:
        torch.distributed.destroy_process_group()


def test_counts_past_2_to_the_31_survive_the_distributed_reduction(tmp_path):
    mp.spawn(_big_counts_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, (counts, seen) in parts[0]["summed"].items():
        local = [p["local"][key] for p in parts]
        assert torch.equal(counts, local[0][0] + local[1][0]) and int(counts.min()) >= 2 * BIG
        assert torch.equal(seen, local[0][1] + local[1][1]) and counts.dtype == seen.dtype == torch.int64
    report = pozfast.APoZReport.load(tmp_path / "rank1.json")
    assert all(report[k].total > 4 * BIG for k in report.layers)


def test_report_format_3_loads_and_version_2_files_still_load(tmp_path):
    v2 = tmp_path / "v2.json"
    v2.write_text('{"format": "pozfast-apoz", "version": 2, "layers": [{"key": "1", "module": "1", "call": 0, '
                  '"channel_dim": 1, "examples": 8, "total": 8, "producers": ["0"], "zeros": [8, 1]}]}')
    old = pozfast.APoZReport.load(v2)
    assert old.thresholds == (0.0,) and old["1"].zeros.tolist() == [8, 1] and old["1"].kind == "relu"
    assert old.dead() == {"1": torch.tensor([0])}
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pozfast-apoz", "version": 3, "thresholds": [0.0, 0.1], "layers": [{"key": "1", '
                   '"module": "1", "call": 0, "channel_dim": 1, "examples": 8, "total": 8, "counts": [[3, 1], [2, 1]]}]}')
    with pytest.raises(ValueError, match="must not decrease as the threshold grows"):
        pozfast.APoZReport.load(bad)


def test_cli_thresholds_activations_and_token_mask(tmp_path):
    from pozfast.cli import main

    spec = tmp_path / "spec.py"
    spec.write_text("from tests import hf_models as hf\n"
                    "def model():\n    return hf.llama()\n"
                    "def data():\n    return [hf.padded_batch(seed=0), hf.padded_batch(seed=1, side='right')]\n")
    for mask, tokens in (("auto", 48), ("none", 60)):
        out = tmp_path / mask
        assert main(["apoz", "--model", f"{spec}:model", "--data", f"{spec}:data", "--out", str(out),
                     "--activations", "silu", "--thresholds", "0", "0.01", "0.1", "--token-mask", mask,
                     "--no-progress"]) == 0
        report = pozfast.APoZReport.load(out / "apoz.json")
        assert report.thresholds == (0.0, 0.01, 0.1) and report["model.layers.0.mlp.act_fn"].total == tokens


NET = models.mlp()


@pytest.mark.parametrize("call, error, match", [
    (lambda: pozfast.track_apoz(NET, thresholds=(-0.1,)), ValueError, "finite and >= 0"),
    (lambda: pozfast.track_apoz(NET, thresholds=(0.1, 0.0)), ValueError, "strictly increasing"),
    (lambda: pozfast.track_apoz(NET, thresholds=(0.0, 0.0)), ValueError, "strictly increasing"),
    (lambda: pozfast.track_apoz(NET, thresholds=[i / 100 for i in range(33)]), ValueError, "1 to 32 values"),
    (lambda: pozfast.track_apoz(NET, thresholds="0"), TypeError, "thresholds must be a sequence of numbers"),
    (lambda: pozfast.track_apoz(NET, activations="gleu"), ValueError,
     r"unknown activation kind 'gleu'; valid kinds: relu, relu6, gelu, silu, .*relu2"),
    (lambda: pozfast.track_apoz(NET, activations=[3]), TypeError, "activations must name one or more kinds"),
    (lambda: pozfast.track_apoz(NET, token_mask=torch.ones(2, 3)), TypeError, "token_mask must be 'auto'"),
    (lambda: pozfast.track_apoz(NET).set_token_mask(torch.ones(2, 3)), TypeError,
     r"mask must hold bool or integers \(nonzero = counted\), got torch.float32"),
    (lambda: pozfast.track_apoz(NET).set_token_mask(torch.ones(2, 3, 1, dtype=torch.bool)), ValueError,
     r"mask must have 2 dims \(sequences, positions\), got shape \(2, 3, 1\)"),
    (lambda: pozfast.apoz(NET, [torch.randn(2, 10)], progress=False, token_mask="yes"), TypeError,
     "token_mask must be 'auto', None or a function"),
    (lambda: pozfast.apoz(NET, [torch.randn(2, 10)], progress=False, token_mask=lambda b: torch.ones(3, 4)), TypeError,
     "the mask token_mask\\(batch\\) returned must hold bool or integers"),
    (lambda: pozfast.apoz(NET, [torch.randn(2, 10)], progress=False, token_mask=lambda b: torch.ones(3, 4, dtype=int)),
     ValueError, r"the token mask of shape \(3, 4\) applies to none of the activations counted"),
    (lambda: pozfast.apoz(hf.llama(), [hf.padded_batch()], progress=False), ValueError, "has no ReLU"),
    (lambda: pozfast.apoz(hf.llama(), [hf.padded_batch()], progress=False, activations="gelu"), ValueError,
     r"has no activation of the kinds tracked \(gelu\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _two_devices() -> tuple[str, str] | None:
    if not torch.cuda.is_available():
        return None
    return ("cuda:0", "cuda:1") if torch.cuda.device_count() >= 2 else ("cuda:0", "cpu")


class Split(nn.Module):
    """Two FFN halves on two devices, as a model split over GPUs runs."""

    def __init__(self, first: str, second: str):
        super().__init__()
        self.up = nn.Linear(8, 16).to(first)
        self.act = nn.GELU()
        self.up2 = nn.Linear(16, 12).to(second)
        self.second = second

    def forward(self, x, attention_mask=None):
        return F.relu(self.up2(self.act(self.up(x)).to(self.second)))


@pytest.mark.skipif(_two_devices() is None, reason="needs a CUDA device (counters on two devices)")
def test_model_split_over_devices_keeps_counts_on_each_device():
    first, second = _two_devices()
    torch.manual_seed(0)
    model = Split(first, second).eval()
    gen = torch.Generator().manual_seed(2)
    batches = [{"x": torch.randn(3, 5, 8, generator=gen), "attention_mask": torch.rand(3, 5, generator=gen) > 0.3}
               for _ in range(2)]
    options = dict(activations=["gelu", "relu"], thresholds=THRESHOLDS)
    with torch.no_grad(), pozfast.track_apoz(model, **options) as tracker:
        for b in batches:
            model(x=b["x"].to(first), attention_mask=b["attention_mask"].to(first))
    assert [s.counts.device for s in tracker._sites.values()] == [torch.device(first), torch.device(second)]
    report = tracker.report()
    assert report.layers == ["act", "<root>"]
    expected = {"act": 0, "<root>": 0}
    with torch.no_grad():  # the same kernels on the same devices, counted in float64 on the CPU
        for b in batches:
            a = model.act(model.up(b["x"].to(first)))
            r = F.relu(model.up2(a.to(second)))
            for key, out in (("act", a), ("<root>", r)):
                expected[key] = expected[key] + near_zero_reference(out.double().cpu(), THRESHOLDS, -1,
                                                                    b["attention_mask"])
    for key in expected:
        assert report[key].counts.device.type == "cpu" and torch.equal(report[key].counts, expected[key])
        assert report[key].total == sum(int(b["attention_mask"].sum()) for b in batches)
