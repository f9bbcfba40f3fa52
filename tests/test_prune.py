"""pozfast.prune: structural removal (function preservation, shapes, counts), selection rules, the
trimming driver (resume), model saving, the demo and the trim command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pozfast
from pozfast import prune, trimming
from tests.models import ResidualBlock


def vgg_small() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.BatchNorm2d(6),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5))


def kill(model: nn.Module, layer: str, channels: list[int]) -> None:
    """Make ``channels`` of ``layer``'s ReLU output exactly zero for every input."""
    modules = dict(model.named_modules())
    m = modules[layer]
    with torch.no_grad():
        m.weight[channels] = 0
        if m.bias is not None:
            m.bias[channels] = -1.0
        names = list(modules)
        nxt = modules[names[names.index(layer) + 1]]
        if isinstance(nxt, nn.BatchNorm2d):
            nxt.weight[channels] = 0
            nxt.bias[channels] = -1.0


@pytest.mark.parametrize("layer,dead", [("0", [1, 4, 7]), ("3", [0, 5]), ("7", [2, 3, 11])])
def test_removing_dead_channels_preserves_the_function_vgg(layer, dead):
    torch.manual_seed(0)
    model = vgg_small().eval()
    kill(model, layer, dead)
    x = torch.randn(10, 3, 8, 8)
    before = model(x)
    report = pozfast.apoz(model, [x], progress=False)
    keys = prune.relu_keys(model, [layer], x)
    plan = prune.select_channels(report, keys, prune.Rule("threshold", 0.999, min_keep=1))
    # the constructed dead channels, and any that are 100 % zero on this data by chance
    assert set(dead) <= set(plan[layer]) and bool((report[keys[layer]].apoz[plan[layer]] == 1).all())
    out = prune.remove_channels(model, plan, x)
    assert out["removed"] == plan
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_removing_dead_channels_preserves_the_function_mlp_and_residual():
    torch.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 9), nn.ReLU(), nn.Linear(9, 3)).eval()
    kill(mlp, "0", [0, 3, 15])
    kill(mlp, "2", [8])
    x = torch.randn(7, 6)
    before = mlp(x)
    prune.remove_channels(mlp, {"0": [0, 3, 15], "2": [8]}, x)
    assert mlp[0].out_features == 13 and mlp[2].in_features == 13 and mlp[4].in_features == 8
    torch.testing.assert_close(mlp(x), before, rtol=1e-5, atol=1e-5)

    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), ResidualBlock(6), ResidualBlock(6)).eval()
    kill(net, "1.conv1", [2, 5])  # conv1 has no bias: BN1 (the next module) makes the channel dead
    x = torch.randn(4, 3, 7, 7)
    before = net(x)
    prune.remove_channels(net, {"1.conv1": [2, 5]}, x)
    assert net[1].conv1.out_channels == 4 and net[1].bn1.num_features == 4 and net[1].conv2.in_channels == 4
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    # A residual-coupled removal takes the whole group: stem, both blocks' conv2 and BN2.
    coupled = prune.remove_channels(net, {"0": [1]}, x)["coupled"]["0"]
    assert net[0].out_channels == 5 and net[1].conv2.out_channels == 5 and net[2].conv2.out_channels == 5
    assert {m for m, _, _ in coupled} >= {"0", "1.conv2", "2.conv2", "1.bn2", "2.bn2"}
    assert net(x).shape == (4, 5, 7, 7)


def test_shapes_and_parameter_counts_conv_flatten_linear():
    model = vgg_small()
    before = (8 * 27 + 8) + 16 + (6 * 72 + 6) + 12 + (12 * 96 + 12) + (5 * 12 + 5)  # conv, BN, conv, BN, fc, fc
    assert prune.count_params(model) == before
    x = torch.randn(2, 3, 8, 8)
    prune.remove_channels(model, {"3": [0, 1]}, x)
    # conv 8->4, BN 4, linear sees 4 * 4 * 4 = 64 inputs
    assert model[3].weight.shape == (4, 8, 3, 3) and model[4].num_features == 4
    assert model[7].weight.shape == (12, 64)
    after = (8 * 27 + 8) + 16 + (4 * 72 + 4) + 8 + (12 * 64 + 12) + (5 * 12 + 5)
    assert prune.count_params(model) == after
    assert prune.compression_rate(before, after) == pytest.approx(1919 / 1385)
    assert model(x).shape == (2, 5)


def test_frozen_stays_frozen_and_channels_last_stays():
    model = vgg_small().to(memory_format=torch.channels_last)
    model[0].weight.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    prune.remove_channels(model, {"0": [0]}, x)
    assert not model[0].weight.requires_grad and model[0].bias.requires_grad
    assert model[3].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("plan,error,match", [
    ({"nope": [0]}, KeyError, "not a module"),
    ({"1": [0]}, TypeError, "BatchNorm2d"),
    ({"0": [8]}, IndexError, "outside"),
    ({"0": list(range(8))}, ValueError, "all 8 channels"),
])
def test_bad_plans(plan, error, match):
    with pytest.raises(error, match=match):
        prune.remove_channels(vgg_small(), plan, torch.randn(1, 3, 8, 8))


def test_coupled_layers_pool_their_apoz():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), ResidualBlock(6), ResidualBlock(6)).eval()
    x = torch.randn(4, 3, 7, 7)
    layers = ["1.conv2", "2.conv2", "1.conv1"]
    groups = prune.coupled_groups(net, layers, x)
    assert groups == [["1.conv2", "2.conv2"], ["1.conv1"]]
    keys = {"1.conv2": "1.relu:1", "2.conv2": "2.relu:1", "1.conv1": "1.relu:0"}
    report = pozfast.apoz(net, [x], progress=False)
    plan = prune.select_channels(report, keys, prune.Rule("ratio", 0.34, min_keep=1), groups)
    pooled = (report["1.relu:1"].apoz + report["2.relu:1"].apoz) / 2
    assert set(plan) == {"1.conv2", "1.conv1"}
    assert plan["1.conv2"] == sorted(torch.argsort(pooled, descending=True)[:2].tolist())
    prune.remove_channels(net, plan, x)
    assert net[2].conv2.out_channels == 4 and net(x).shape == (4, 4, 7, 7)


def test_rules():
    a = torch.tensor([0.1, 0.95, 0.5, 0.99, 0.2, 0.97, 0.3, 0.4, 0.6, 0.7])
    assert prune.Rule("threshold", 0.9, min_keep=1).select(a) == [1, 3, 5]
    assert prune.Rule("threshold", 0.9, min_keep=8).select(a) == [3, 5]  # floor: the highest APoZ go first
    assert prune.Rule("ratio", 0.2, min_keep=1).select(a) == [3, 5]
    mean, std = a.double().mean(), a.double().std(unbiased=False)
    assert prune.Rule("std", 1.0, min_keep=0.1).select(a) == [i for i in range(10) if a[i] > mean + std]
    with pytest.raises(ValueError, match="rule kind"):
        prune.Rule("magnitude")
    with pytest.raises(ValueError, match="ratio"):
        prune.Rule("ratio", 1.5)


def _loaders(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(96, 3, 8, 8, generator=g), torch.randint(0, 5, (96,), generator=g)
    return DataLoader(TensorDataset(x[:64], y[:64]), batch_size=16, shuffle=True), \
        DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)


def _trained(seed=0):
    torch.manual_seed(seed)
    return vgg_small()


def test_trim_resume_gives_the_same_table(tmp_path, monkeypatch):
    kwargs = dict(layers=["3", "7"], rule=prune.Rule("ratio", 0.25, min_keep=1), rounds=3, fine_tune_epochs=1,
                  progress=False)
    train, val = _loaders()
    full = prune.trim(_trained(), train, val, checkpoint_dir=tmp_path / "a", **kwargs)
    assert [r["round"] for r in full.rows] == [0, 1, 2, 3]
    assert full.rows[-1]["widths"] == {"3": 3, "7": 6} and full.rows[-1]["compression"] > 1
    assert (tmp_path / "a" / "trim.csv").read_text().count("\n") == 5

    real = prune.fine_tune
    calls = {"n": 0}

    def interrupted(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(*args, **kw)

    monkeypatch.setattr(trimming, "fine_tune", interrupted)
    train, val = _loaders()
    with pytest.raises(KeyboardInterrupt):
        prune.trim(_trained(), train, val, checkpoint_dir=tmp_path / "b", **kwargs)
    monkeypatch.setattr(trimming, "fine_tune", real)
    assert len(torch.load(tmp_path / "b" / "state.pt", weights_only=False)["rows"]) == 2
    resumed = prune.trim(_trained(), train, val, checkpoint_dir=tmp_path / "b", **kwargs)
    assert resumed.rows == full.rows
    assert "top-5 before FT" in resumed.table()

    x = next(iter(val))[0]
    exported = torch.export.load(tmp_path / "b" / "model.pt2").module()
    whole = torch.load(tmp_path / "b" / "model.pt", weights_only=False).eval()
    torch.testing.assert_close(exported(x), whole(x))
    assert json.loads((tmp_path / "b" / "trim.json").read_text())["rows"] == json.loads(json.dumps(full.rows))


def test_trim_bad_options():
    train, val = _loaders()
    with pytest.raises(ValueError, match="rounds"):
        prune.trim(_trained(), train, val, layers=["3"], rounds=0)
    with pytest.raises(KeyError, match="not a module"):
        prune.trim(_trained(), train, val, layers=["conv9"])
    with pytest.raises(KeyError, match="reaches no counted ReLU"):
        prune.trim(_trained(), train, val, layers=["9"])


def test_demo_reduced(tmp_path):
    from pozfast import demo

    a = demo.run(tmp_path / "a", epochs=2, rounds=1, fine_tune_epochs=1, steps=8, progress=False)
    b = demo.run(tmp_path / "b", epochs=2, rounds=1, fine_tune_epochs=1, steps=8, progress=False)
    assert json.dumps(a) == json.dumps(b)  # seeded: the same numbers (NaN for steps without valid pairs)
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| round |" in report and "R2 at 25% (low to high)" in report
    for png in ("apoz_fc1.png", "apoz_layers.png", "insertion_curves.png"):
        assert png in report and (tmp_path / "a" / png).exists()
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["geometry"]["deck"] and results["dead"]["channels"] > 0  # the digits CNN has dead FC units
    assert "Dead channels removed first" in report and results["dead"]["max_rel_change"] <= 1e-5


def test_interrupted_demo_rerun_leaves_the_complete_folder(tmp_path, monkeypatch):
    from pozfast import demo

    out = tmp_path / "demo"
    demo.run(out, epochs=1, rounds=1, fine_tune_epochs=0, steps=4, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "insertion_curve", interrupted)  # after apoz.json and the trimming were written
    with pytest.raises(KeyboardInterrupt):
        demo.run(out, epochs=1, rounds=1, fine_tune_epochs=0, steps=4, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no partial folder left beside it


def test_trim_command(tmp_path):
    spec = tmp_path / "spec.py"
    spec.write_text(
        "import torch\nfrom tests.test_prune import _loaders, _trained\n"
        "def model():\n    return _trained()\n"
        "def train():\n    return _loaders()[0]\n"
        "def val():\n    return _loaders()[1]\n")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    import os

    cmd = [sys.executable, "-m", "pozfast.cli", "trim", "--model", f"{spec}:model", "--train-data", f"{spec}:train",
           "--val-data", f"{spec}:val", "--layers", "3", "--rule", "ratio", "--amount", "0.25", "--rounds", "1",
           "--out", str(tmp_path / "out"), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    assert res.returncode == 0, res.stderr
    assert "| round |" in res.stdout and (tmp_path / "out" / "model.pt2").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, check=False)
    assert again.returncode != 0 and "--resume" in again.stderr
    help_text = subprocess.run([sys.executable, "-m", "pozfast.cli", "--help"], capture_output=True, text=True).stdout
    assert all(c in help_text for c in ("apoz", "rdm", "demo", "trim"))
