"""pozfast.apoz / track_apoz against a naive reference (hooks or recorded outputs, counted in float64)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import pozfast
from tests import models


def _zeros_per_channel(out: torch.Tensor, channel_dim: int) -> torch.Tensor:
    axis = channel_dim % out.dim()
    return (out.double() == 0).sum(dim=[d for d in range(out.dim()) if d != axis]).long()


def hook_reference(model: nn.Module, batches, channel_dims: dict) -> dict:
    """Per key (module name, ':i' when called more than once), float64 zero counts from forward hooks on
    nn.ReLU modules. ``channel_dims`` gives the channel axis per module name."""
    counts: dict = {}
    calls: dict = {}

    def make(name):
        def hook(mod, args, out):
            i = calls.get(name, 0)
            calls[name] = i + 1
            z = _zeros_per_channel(out, channel_dims[name])
            counts[(name, i)] = counts.get((name, i), 0) + z
        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        for x in batches:
            calls.clear()
            model(x)
    for h in handles:
        h.remove()
    per_module = {}
    for name, i in counts:
        per_module[name] = max(per_module.get(name, 0), i + 1)
    return {name + (f":{i}" if per_module[name] > 1 else ""): c for (name, i), c in counts.items()}


def check(report, expected: dict, batches_examples: int):
    assert report.layers == list(expected)
    for key, zeros in expected.items():
        entry = report[key]
        assert torch.equal(entry.zeros, zeros), key
        assert entry.examples == batches_examples
        assert torch.allclose(entry.apoz, zeros.double() / entry.total)


def test_vgg_with_bn():
    torch.manual_seed(0)
    model = models.vgg().eval()
    batches = [torch.randn(16, 1, 8, 8) for _ in range(3)]
    dims = {"features.0.2": 1, "features.0.5": 1, "features.1.2": 1, "features.1.5": 1, "relu1": -1, "relu2": -1}
    expected = hook_reference(model, batches, dims)
    report = pozfast.apoz(model, batches, progress=False)
    check(report, expected, 48)
    assert report["features.0.2"].total == 48 * 64 and report["relu1"].total == 48
    assert report["features.0.2"].channel_dim == 1 and report["relu1"].channel_dim == 1


def test_residual_block_reusing_one_relu():
    torch.manual_seed(1)
    model = models.ResNetish().eval()
    batches = [torch.randn(4, 3, 7, 9) for _ in range(2)]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    expected = hook_reference(model, batches, {n: 1 for n in names})
    report = pozfast.apoz(model, batches, progress=False)
    assert report.layers[0] == "<root>"  # F.relu in the root's forward
    assert report.layers[1:] == ["layer1.0.relu:0", "layer1.0.relu:1", "layer1.1.relu:0", "layer1.1.relu:1"]
    check(pozfast.apoz(model, batches, progress=False, layers=["layer1"]), expected, 8)
    only = pozfast.apoz(model, batches, progress=False, layers=["layer1.1.relu:0", "<root>"])
    assert only.layers == ["<root>", "layer1.1.relu:0"]


def test_functional_calls():
    torch.manual_seed(2)
    model = models.Functional().eval()
    batches = [torch.randn(5, 3, 8, 8) for _ in range(2)]
    model.record = []
    with torch.no_grad():
        for x in batches:
            model(x)
    recorded, model.record = model.record, None
    per_batch = len(recorded) // len(batches)
    expected = [sum(_zeros_per_channel(recorded[b * per_batch + i], 1) for b in range(len(batches)))
                for i in range(per_batch)]
    report = pozfast.apoz(model, batches, progress=False)
    assert report.layers == [f"<root>:{i}" for i in range(per_batch)]
    for key, zeros in zip(report.layers, expected):
        assert torch.equal(report[key].zeros, zeros), key


def test_mlp_and_tokens():
    torch.manual_seed(3)
    model = models.mlp().eval()
    batches = [torch.randn(9, 10) for _ in range(4)]
    check(pozfast.apoz(model, batches, progress=False), hook_reference(model, batches, {"1": -1, "3": -1}), 36)

    block = models.TokenMLP().eval()
    tokens = [torch.randn(3, 5, 8) for _ in range(2)]
    report = pozfast.apoz(block, tokens, progress=False)
    check(report, hook_reference(block, tokens, {"act": -1}), 6)
    assert report["act"].channels == 24 and report["act"].total == 6 * 5


def test_channels_last_cnn():
    torch.manual_seed(4)
    model = models.vgg().eval().to(memory_format=torch.channels_last)
    batches = [torch.randn(8, 1, 8, 8).to(memory_format=torch.channels_last) for _ in range(2)]
    dims = {"features.0.2": 1, "features.0.5": 1, "features.1.2": 1, "features.1.5": 1, "relu1": -1, "relu2": -1}
    check(pozfast.apoz(model, batches, progress=False), hook_reference(model, batches, dims), 16)


def test_channel_dims_override():
    block = models.TokenMLP().eval()
    tokens = [torch.randn(3, 5, 8)]
    report = pozfast.apoz(block, tokens, progress=False, channel_dims={"act": 1})
    assert report["act"].channels == 5 and report["act"].channel_dim == 1
    assert torch.equal(report["act"].zeros, hook_reference(block, tokens, {"act": 1})["act"])


def test_outputs_and_gradients_unchanged_while_tracking():
    torch.manual_seed(5)
    model = models.ResNetish().train()
    x = torch.randn(4, 3, 7, 9)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.load_state_dict(state)  # BN running stats back to where they were
    with pozfast.track_apoz(model) as tracker:
        out = model(x)
        out.sum().backward()
    assert torch.equal(out, ref)
    for p, g in zip(model.parameters(), ref_grads):
        assert torch.equal(p.grad, g)
    assert tracker.report().layers == ["<root>", "layer1.0.relu:0", "layer1.0.relu:1", "layer1.1.relu:0",
                                       "layer1.1.relu:1"]


def test_modes_restored_even_on_error():
    model = models.vgg().train()
    model.features[0][1].eval()  # a frozen BN inside a training model keeps its own flag
    pozfast.apoz(model, [torch.randn(2, 1, 8, 8)], progress=False)
    assert model.training and not model.features[0][1].training and model.features[1][1].training

    def broken():
        yield torch.randn(2, 1, 8, 8)
        raise RuntimeError("loader failed")

    with pytest.raises(RuntimeError, match="loader failed"):
        pozfast.apoz(model, broken(), progress=False)
    assert model.training and not model.features[0][1].training


def test_batch_forms_and_max_batches():
    model = models.vgg().eval()
    xs = [torch.randn(3, 1, 8, 8) for _ in range(3)]
    as_tensor = pozfast.apoz(model, xs, progress=False)
    as_tuple = pozfast.apoz(model, [(x, torch.zeros(3)) for x in xs], progress=False)
    as_dict = pozfast.apoz(model, [{"image": x, "label": 0} for x in xs], progress=False)
    picked = pozfast.apoz(model, [{"a": x} for x in xs], progress=False, inputs=lambda b: b["a"])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.cat(xs)), batch_size=3)
    as_loader = pozfast.apoz(model, loader, progress=False)
    for r in (as_tuple, as_dict, picked, as_loader):
        for key in as_tensor.layers:
            assert torch.equal(r[key].zeros, as_tensor[key].zeros)
    first = pozfast.apoz(model, xs, progress=False, max_batches=1)
    assert first["relu1"].examples == 3


def test_resume_after_interruption(tmp_path):
    model = models.vgg().eval()
    batches = [torch.randn(4, 1, 8, 8) for _ in range(7)]
    full = pozfast.apoz(model, batches, progress=False)

    def interrupted():
        for i, b in enumerate(batches):
            if i == 5:
                raise KeyboardInterrupt
            yield b

    ckpt = tmp_path / "apoz.ckpt"
    with pytest.raises(KeyboardInterrupt):
        pozfast.apoz(model, interrupted(), progress=False, checkpoint=ckpt, checkpoint_every=2)
    assert ckpt.exists()
    resumed = pozfast.apoz(model, batches, progress=False, checkpoint=ckpt)
    for key in full.layers:
        assert torch.equal(resumed[key].zeros, full[key].zeros)
        assert resumed[key].examples == full[key].examples == 28


def test_tracker_state_dict_roundtrip():
    model = models.mlp().eval()
    batches = [torch.randn(5, 10) for _ in range(4)]
    with torch.no_grad(), pozfast.track_apoz(model) as t:
        for x in batches[:2]:
            model(x)
    state = t.state_dict()
    t2 = pozfast.track_apoz(model)
    t2.load_state_dict(state)
    with torch.no_grad(), t2:
        for x in batches[2:]:
            model(x)
    ref = pozfast.apoz(model, batches, progress=False)
    for key in ref.layers:
        assert torch.equal(t2.report()[key].zeros, ref[key].zeros)


def test_a_state_dict_is_a_snapshot_and_a_loaded_one_is_not_shared():
    model = models.mlp().eval()
    x = torch.randn(5, 10)
    with torch.no_grad(), pozfast.track_apoz(model) as t:
        model(x)
    state = t.state_dict()
    frozen = {s["module"]: s["counts"].clone() for s in state["sites"]}
    t2 = pozfast.track_apoz(model)
    t2.load_state_dict(state)
    with torch.no_grad(), t, t2:
        model(x)
    assert all(torch.equal(s["counts"], frozen[s["module"]]) for s in state["sites"])  # later counting left it
    for key in t.report().layers:
        assert torch.equal(t2.report()[key].zeros, t.report()[key].zeros)  # each counted the forward once


def test_leaving_a_tracker_removes_its_hooks_and_mode_even_when_dropping_a_forward_fails(monkeypatch):
    model = models.mlp().eval()
    tracker = pozfast.track_apoz(model)

    def fail():
        raise RuntimeError("device error")

    with pytest.raises(RuntimeError, match="device error"):
        with tracker:
            monkeypatch.setattr(tracker, "_abort", fail)
    assert not torch._C._is_torch_function_mode_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_report_save_load_summary_plots(tmp_path):
    report = pozfast.apoz(models.vgg().eval(), [torch.randn(6, 1, 8, 8)], progress=False)
    path = report.save(tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["format"] == "pozfast-apoz" and len(data["layers"]) == len(report)
    loaded = pozfast.APoZReport.load(path)
    assert loaded.layers == report.layers
    for key in report.layers:
        assert torch.equal(loaded[key].zeros, report[key].zeros) and loaded[key].total == report[key].total
    summary = report.summary()
    assert all(key in summary for key in report.layers) and "=100%" in summary
    png = report.plot_histogram("relu1", tmp_path / "h.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.plot_overview(tmp_path / "o.png").stat().st_size > 1000
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a pozfast APoZ report"):
        pozfast.APoZReport.load(tmp_path / "bad.json")


def test_exact_100_percent_channels():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, 0.0]))
    report = pozfast.apoz(model, [torch.randn(7, 4)], progress=False)
    assert report["1"].apoz.tolist() == [1.0, 0.0, 1.0]
    assert report.summary().splitlines()[-1].split()[-1] == "2"


@pytest.mark.parametrize("call, error, match", [
    (lambda: pozfast.apoz(models.no_relu(), [torch.randn(2, 4)], progress=False), ValueError, "has no ReLU"),
    (lambda: pozfast.apoz(models.mlp(), [], progress=False), ValueError, "no batches"),
    (lambda: pozfast.apoz(models.mlp(), [{"feat": torch.randn(2, 10)}], progress=False), TypeError, "inputs="),
    (lambda: pozfast.apoz(models.mlp(), [3.5], progress=False), TypeError, "cannot call the model with a batch of type float"),
    (lambda: pozfast.apoz(models.mlp(), [torch.randn(2, 10)], progress=False, layers=["nope"]), KeyError, "nope"),
    (lambda: pozfast.track_apoz("model"), TypeError, "nn.Module"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def _distributed_worker(rank, world, init_file, out_dir, batches_per_rank, driver):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = models.vgg().eval()
        data = models.digits_batches(n=sum(batches_per_rank), batch=8, seed=1)
        start = sum(batches_per_rank[:rank])
        mine = data[start:start + batches_per_rank[rank]]
        if driver == "apoz":  # a rank without batches must not raise (nor hang the others)
            report = pozfast.apoz(model, mine, progress=False)
        else:
            tracker = pozfast.track_apoz(model)
            with torch.no_grad(), tracker:
                for x, _ in mine:
                    model(x)
            report = tracker.report()
        report.save(Path(out_dir) / f"rank{rank}.json")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("batches_per_rank, driver", [((3, 1), "track"), ((2, 0), "track"), ((2, 0), "apoz")],
                         ids=["uneven", "one-rank-empty", "apoz-one-rank-empty"])
def test_distributed_gloo_two_ranks(tmp_path, batches_per_rank, driver):
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init"), str(tmp_path), batches_per_rank, driver), nprocs=2)
    torch.manual_seed(0)
    model = models.vgg().eval()
    data = models.digits_batches(n=sum(batches_per_rank), batch=8, seed=1)
    union = pozfast.apoz(model, data, progress=False)
    for rank in range(2):
        got = pozfast.APoZReport.load(tmp_path / f"rank{rank}.json")
        assert got.layers == union.layers
        for key in union.layers:
            assert torch.equal(got[key].zeros, union[key].zeros)
            assert got[key].examples == union[key].examples == 8 * sum(batches_per_rank)


def test_cli_user_model_and_data(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text("import torch\nfrom tests import models\n"
                    "def model():\n    torch.manual_seed(0)\n    return models.mlp()\n"
                    "def data():\n    return [torch.randn(4, 10) for _ in range(3)]\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "pozfast.cli", "apoz", "--model", f"{spec}:model",
                             "--data", f"{spec}:data", "--out", str(out), "--no-progress"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "mean APoZ" in result.stdout
    assert {p.name for p in out.iterdir()} >= {"apoz.json", "summary.txt", "overview.png", "hist_1.png", "hist_3.png"}
    bad = subprocess.run([sys.executable, "-m", "pozfast.cli", "apoz", "--model", f"{spec}:model"],
                         capture_output=True, text=True, env=env, check=False)
    assert bad.returncode != 0 and "both --model and --data" in bad.stderr


def test_cli_embedded_default(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pozfast.cli", "apoz", "--out", str(tmp_path), "--no-progress"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    report = pozfast.APoZReport.load(tmp_path / "apoz.json")
    assert report.layers == ["features.0.2", "features.0.5", "features.1.2", "features.1.5", "relu1", "relu2"]
    assert report["relu1"].examples == 449
