"""The whole workflow on the models people bring: reused and functional ReLUs, Hugging Face batches and
architectures, compiled and DDP-wrapped models, exact dead-channel removal, saved models, flags and state."""

import collections
import copy
import gc
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pozfast
from pozfast import batches, prune
from tests import hf_models as hf
from tests import models


def flags(model: nn.Module) -> list:
    return [m.training for m in model.modules()]


def mixed_flags(model: nn.Module) -> nn.Module:
    """Train mode with some modules in eval mode (e.g. frozen BatchNorm), the flags to preserve."""
    model.train()
    for i, m in enumerate(model.modules()):
        if i % 3 == 1:
            m.eval()
    return model


def loaders(x, y, batch=16):
    return DataLoader(TensorDataset(x, y), batch_size=batch), DataLoader(TensorDataset(x[: 2 * batch], y[: 2 * batch]),
                                                                         batch_size=batch)


# --- sites know their producer; layer names resolve ----------------------------------------------

def test_producers_of_reused_and_functional_relus():
    net = models.ResNetish().eval()
    report = pozfast.apoz(net, [torch.randn(2, 3, 6, 6)], progress=False)
    assert report["layer1.0.relu:0"].producers == ("layer1.0.conv1",)
    assert report["layer1.0.relu:1"].producer == "layer1.0.conv2"
    assert report["<root>"].producers == ("stem",)
    assert prune.resolve_layers(report, ["layer1.0.conv1", "layer1.1.conv2"]) == {
        "layer1.0.conv1": "layer1.0.relu:0", "layer1.1.conv2": "layer1.1.relu:1"}

    helper = models.HelperFunctional().eval()
    x = torch.rand(3, 1, 8, 8)
    report = pozfast.apoz(helper, [x], progress=False)
    assert report.layers == ["<root>:0", "<root>:1", "<root>:2", "<root>:3"]
    assert [e.producers for e in report] == [("conv",), ("fc1",), ("fc2",), ("fc3",)]
    assert prune.relu_keys(helper, ["fc2", "conv"], x) == {"fc2": "<root>:2", "conv": "<root>:0"}
    # layers= of apoz takes producer names too
    assert pozfast.apoz(helper, [x], progress=False, layers=["fc1"]).layers == ["<root>:1"]
    # a saved report keeps them
    assert pozfast.APoZReport.load(report.save(Path(__file__).parent / ".." / ".pytest_cache" / "r.json"))[
        "<root>:3"].producers == ("fc3",)


def test_producers_through_dropout_pool_reshape_and_residual_shortcut():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.short = nn.Conv2d(2, 4, 1)
            self.drop = nn.Dropout(0.1)
            self.pool = nn.AvgPool2d(2)
            self.fc = nn.Linear(16, 6)

        def forward(self, x):
            a = F.relu(self.pool(self.drop(self.conv(x)) + self.short(x)))
            return torch.relu(self.fc(a.view(a.shape[0], 1, 16)).reshape(-1, 6))

    report = pozfast.apoz(Net().eval(), [torch.randn(3, 2, 4, 4)], progress=False)
    assert report["<root>:0"].producers == ("conv", "short") and report["<root>:0"].channel_dim == 1
    assert report["<root>:1"].producers == ("fc",) and report["<root>:1"].channels == 6


@pytest.mark.parametrize("layers, error, match", [
    (["nope"], KeyError, "reaches no counted ReLU"),
    (["head"], KeyError, "layers that do"),
    ("fc1", TypeError, "list of names"),
    ({"fc1": "<root>:9"}, KeyError, "<root>:9"),
])
def test_layer_names_that_reach_no_site(layers, error, match):
    helper = models.HelperFunctional().eval()
    report = pozfast.apoz(helper, [torch.rand(2, 1, 8, 8)], progress=False)
    with pytest.raises(error, match=match):
        prune.resolve_layers(report, layers)


def test_a_layer_feeding_two_sites_is_ambiguous():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return F.relu(y) + torch.relu(y)

    report = pozfast.apoz(Two(), [torch.randn(3, 4)], progress=False)
    with pytest.raises(ValueError, match="several ReLU sites"):
        prune.resolve_layers(report, ["fc"])


# --- real architectures --------------------------------------------------------------------------

def test_trim_resnet18_layout_with_layers_inside_basic_blocks(tmp_path):
    model = hf.resnet()
    gen = torch.Generator().manual_seed(0)
    train, val = loaders(torch.randn(48, 3, 16, 16, generator=gen), torch.randint(0, 5, (48,), generator=gen))
    inner = "resnet.encoder.stages.{}.layers.{}.layer.{}.convolution"
    layers = [inner.format(0, 0, 0), inner.format(1, 1, 0), inner.format(0, 1, 1), inner.format(2, 0, 1)]
    result = prune.trim(model, train, val, layers=layers, rule=prune.Rule("ratio", 0.25, min_keep=1), rounds=2,
                        fine_tune_epochs=1, progress=False, checkpoint_dir=tmp_path)
    widths = [r["widths"] for r in result.rows]
    assert all(widths[2][n] < widths[1][n] < widths[0][n] for n in layers)
    trimmed = result.model
    modules = dict(trimmed.named_modules())
    # residual-coupled convolutions of stage 0 (stem, each block's second conv) keep one width
    stage0 = [modules["resnet.embedder.embedder.convolution"], modules[inner.format(0, 0, 1)], modules[inner.format(0, 1, 1)]]
    assert len({m.out_channels for m in stage0}) == 1 and stage0[0].out_channels == widths[2][inner.format(0, 1, 1)]
    assert trimmed(torch.randn(3, 3, 16, 16)).logits.shape == (3, 5)
    exported = torch.export.load(tmp_path / "model.pt2").module()  # dynamic batch: another batch size runs
    x = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(exported(x).logits if hasattr(exported(x), "logits") else exported(x)[0],
                               trimmed.eval()(x).logits)


def test_trim_torchvision_style_resnet_reusing_one_relu():
    net = models.ResNetish()
    gen = torch.Generator().manual_seed(1)
    train, val = loaders(torch.randn(32, 3, 6, 6, generator=gen), torch.randint(0, 4, (32,), generator=gen), batch=8)
    result = prune.trim(net, train, val, layers=["layer1.0.conv1", "layer1.1.conv1", "layer1.1.conv2"],
                        rule=prune.Rule("ratio", 0.34, min_keep=1), rounds=2, progress=False)
    last = result.rows[-1]["widths"]
    assert last["layer1.0.conv1"] < 6 and last["layer1.1.conv2"] < 6
    assert result.model.stem.out_channels == result.model.layer1[0].conv2.out_channels == last["layer1.1.conv2"]
    assert result.model(torch.randn(2, 3, 6, 6)).shape == (2, 4)


@hf.needs_torchvision
def test_torchvision_resnet18_vgg11_bn_mobilenet(tmp_path):
    tv = hf.torchvision_models
    x = torch.randn(2, 3, 64, 64)
    resnet = tv.resnet18(num_classes=10).eval()
    report = pozfast.apoz(resnet, [x], progress=False)
    assert report["layer1.0.relu:0"].producers == ("layer1.0.conv1",)
    gen = torch.Generator().manual_seed(0)
    train, val = loaders(torch.randn(16, 3, 64, 64, generator=gen), torch.randint(0, 10, (16,), generator=gen), batch=8)
    result = prune.trim(resnet, train, val, layers=["layer1.0.conv1", "layer2.1.conv2"], rule=prune.Rule("ratio", 0.25),
                        rounds=2, progress=False)
    assert result.rows[-1]["widths"]["layer1.0.conv1"] < 64 and result.model(x).shape == (2, 10)
    for build in (tv.vgg11_bn, tv.mobilenet_v3_small):
        model = build(num_classes=10).eval()
        assert len(pozfast.apoz(model, [x], progress=False)) > 0


def hook_counts(model, module_type, call):
    """Per module of ``module_type``, zero counts of its output over the last axis, from forward hooks."""
    counts = {}
    handles = [m.register_forward_hook(lambda mod, a, out, n=n: counts.__setitem__(
        n, (out.reshape(-1, out.shape[-1]) == 0).sum(0))) for n, m in model.named_modules() if isinstance(m, module_type)]
    with torch.no_grad():
        call()
    for h in handles:
        h.remove()
    return counts


def test_opt_padded_batch_reaches_the_model_with_its_attention_mask():
    model = hf.opt()
    batch = hf.token_batch()
    report = pozfast.apoz(model, [batch], progress=False, token_mask=None)  # every position, padding too
    expected = hook_counts(model, nn.ReLU, lambda: model(**batch))
    assert report.layers == list(expected) and len(expected) == 2
    for key, zeros in expected.items():
        assert torch.equal(report[key].zeros, zeros)
        assert report[key].examples == 30 and report[key].producer == key.replace("activation_fn", "fc1")
    unmasked = hook_counts(model, nn.ReLU, lambda: model(input_ids=batch["input_ids"]))
    assert any(not torch.equal(unmasked[k], expected[k]) for k in expected)  # the mask changes the activations


def test_bert_batch_encoding_evaluate_and_fine_tune_with_hf_outputs():
    model = hf.bert()
    enc = hf.transformers.BatchEncoding({**hf.token_batch(n=4, left_pad=(0, 3, 0, 5)),
                                         "token_type_ids": torch.zeros(4, 10, dtype=torch.long),
                                         "labels": torch.tensor([0, 1, 2, 1])})
    report = pozfast.apoz(model, [enc], progress=False, token_mask=None)  # every position, padding too
    expected = hook_counts(model, nn.ReLU, lambda: model(**{k: v for k, v in enc.items()}))
    assert report.layers == list(expected)
    assert all(torch.equal(report[k].zeros, v) for k, v in expected.items())
    top1, top5 = prune.evaluate(model, [enc])
    logits = model(**enc).logits
    assert top1 == pytest.approx(float((logits.argmax(1) == enc["labels"]).float().mean())) and top5 is None
    before = flags(mixed_flags(model))
    params = [p.detach().clone() for p in model.parameters()]
    prune.fine_tune(model, [enc], 1, torch.optim.SGD(model.parameters(), lr=0.1), progress=False)  # uses .loss
    assert flags(model) == before
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), params))


def test_mobilenet_v2_dead_channels_removed_exactly():
    model = hf.mobilenet_v2()
    models.randomize_batchnorm(model)
    expand = "mobilenet_v2.layer.1.expand_1x1"
    modules = dict(model.named_modules())
    models.kill_channels(modules[expand + ".convolution"], [0, 3], modules[expand + ".normalization"])
    x = torch.randn(4, 3, 32, 32)
    before = model(x).logits
    report = pozfast.apoz(model, [x], progress=False)
    summary = prune.remove_dead(model, report, x, layers=[expand + ".convolution"])
    assert {0, 3} <= set(summary.removed[expand + ".convolution"]) and summary.params_after < summary.params_before
    assert modules[expand + ".convolution"].out_channels == modules[expand + ".convolution"].weight.shape[0]
    after = model(x).logits
    assert float((after - before).norm() / before.norm()) <= 1e-5


# --- wrapped models ------------------------------------------------------------------------------

def test_compiled_model_gives_eager_keys_and_counts():
    net = models.ResNetish().eval()
    data = [torch.randn(3, 3, 6, 6) for _ in range(2)]
    eager = pozfast.apoz(net, data, progress=False)
    compiled = torch.compile(net)
    report = pozfast.apoz(compiled, data, progress=False)
    assert report.layers == eager.layers
    assert all(torch.equal(report[k].zeros, eager[k].zeros) for k in eager.layers)
    with torch.no_grad(), pozfast.track_apoz(compiled) as tracker:
        for x in data:
            compiled(x)
    assert all(torch.equal(tracker.report()[k].zeros, eager[k].zeros) for k in eager.layers)


def test_ddp_wrapped_model_gives_eager_keys(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        net = models.vgg().eval()
        data = [x for x, _ in models.digits_batches(n=2, batch=4)]
        eager = pozfast.apoz(net, data, progress=False)
        ddp = nn.parallel.DistributedDataParallel(net)
        report = pozfast.apoz(ddp, data, progress=False)
        del ddp  # before its group: a DDP reducer freed after its gloo group was destroyed can hang in gloo
        gc.collect()
        assert report.layers == eager.layers and "module" not in "".join(report.layers)
        assert all(torch.equal(report[k].zeros, eager[k].zeros) for k in eager.layers)
        assert prune.resolve_layers(report, ["fc1"]) == {"fc1": "relu1"}
    finally:
        torch.distributed.destroy_process_group()


def test_data_parallel_is_refused_with_advice():
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        pozfast.apoz(nn.DataParallel(models.mlp()), [torch.randn(2, 10)], progress=False)


# --- batches, one way -----------------------------------------------------------------------------

def test_moving_a_batch_keeps_a_hugging_face_batch_encoding_and_the_original():
    from transformers import BatchEncoding

    ids = torch.arange(6).view(2, 3)
    batch = BatchEncoding({"input_ids": ids, "labels": ids.clone()})
    moved = batches.to_device(batch, "cpu")
    assert type(moved) is BatchEncoding and moved.labels is not None and moved is not batch
    assert torch.equal(moved["input_ids"], ids) and batch["input_ids"] is ids
    frozen = types.MappingProxyType({"x": ids})  # a mapping that cannot be updated becomes a dict
    assert batches.to_device(frozen, "cpu") == {"x": ids}


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_tracker_that_began_in_inference_mode_counts_outside_it(compiled):
    # Its counters are made in its first forward; a compiled one traces its way out of inference mode.
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    fn = torch.compile(lambda x: net(x)) if compiled else net
    x = torch.randn(5, 8)
    with torch.inference_mode(), pozfast.track_apoz(net) as tracker:
        fn(x)
    with torch.no_grad(), tracker:
        net(x)
    want = pozfast.apoz(net, [x, x], progress=False)
    assert tracker.batches == 2
    assert torch.equal(tracker.report()["1"].zeros, want["1"].zeros) and tracker.report()["1"].examples == 10


class KwModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x, scale=None):
        y = torch.relu(self.fc(x))
        return y * scale if scale is not None else y


Pair = collections.namedtuple("Pair", "x scale")
Other = collections.namedtuple("Other", "features label")


def test_batch_forms():
    m = KwModel()
    x, s = torch.randn(2, 4), torch.tensor(2.0)
    assert batches.call_args(m, x) == ((x,), {})
    assert batches.call_args(m, (x, torch.zeros(2))) == ((x,), {})
    assert batches.call_args(m, [x, torch.zeros(2)]) == ((x,), {})
    assert batches.call_args(m, ((x, s), torch.zeros(2))) == ((x, s), {})
    assert batches.call_args(m, {"x": x, "scale": s, "labels": 1}) == ((), {"x": x, "scale": s})
    assert batches.call_args(m, ({"x": x}, 1)) == ((), {"x": x})
    assert batches.call_args(m, Pair(x, s)) == ((), {"x": x, "scale": s})
    assert batches.call_args(m, Other(x, 1)) == ((x,), {})
    assert batches.call_args(m, {"image": x, "label": 1}) == ((x,), {})  # no key is an argument: the input entry
    assert batches.call_args(m, {"x": x}, inputs=lambda b: (b["x"], s)) == ((x, s), {})
    assert torch.equal(batches.batch_targets(Other(x, torch.ones(2))), torch.ones(2))
    assert batches.batch_targets({"labels": 3}) == 3 and batches.batch_targets((x, 5)) == 5
    with pytest.raises(TypeError, match="targets="):
        batches.batch_targets(x)
    with pytest.raises(TypeError, match="inputs="):
        batches.call_args(m, {"feat": x})
    with pytest.raises(TypeError, match="batch of type str"):
        batches.call_args(m, "x")
    report = pozfast.apoz(m, [{"x": x, "scale": s}, Pair(x, s), (x, 0)], progress=False)
    assert report["<root>"].examples == 6


# --- saved models, flags, state ---------------------------------------------------------------------

def test_model_pt2_has_a_dynamic_batch_and_export_failures_are_reported(tmp_path):
    net = models.vgg().eval()
    paths = prune.save_model(net, tmp_path / "a", torch.randn(8, 1, 8, 8))
    program = torch.export.load(paths["exported"]).module()
    for n in (1, 3, 17):
        x = torch.randn(n, 1, 8, 8)
        torch.testing.assert_close(program(x), net(x))

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "model.pt2").write_bytes(b"stale")
    paths = prune.save_model(models.DataDependent(), tmp_path / "b", torch.randn(4, 3))
    assert paths["exported"] is None and paths["export_error"] and Path(paths["module"]).exists()
    assert not (tmp_path / "b" / "model.pt2").exists()


def test_every_function_leaves_the_flags_as_found(tmp_path):
    net = mixed_flags(models.CrepeLike())
    before = flags(net)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 5, (8,))
    pozfast.apoz(net, [x], progress=False)
    prune.relu_keys(net, ["conv1"], x)
    prune.coupled_groups(net, ["conv1", "fc1"], x)
    prune.evaluate(net, [(x, y)])
    prune.fine_tune(net, [(x, y)], 1, torch.optim.SGD(net.parameters(), lr=0.01), progress=False)
    prune.remove_channels(net, {"conv1": [0]}, x)
    prune.remove_dead(net, pozfast.apoz(net, [x], progress=False), x)
    prune.save_model(net, tmp_path, x)
    assert flags(net) == before
    with pytest.raises(ValueError, match="keep at least one"):
        prune.remove_channels(net, {"fc1": list(range(net.fc1.out_features))}, x)
    with pytest.raises(RuntimeError):
        prune.remove_channels(net, {"fc1": [0]}, torch.randn(2, 3, 8, 8))  # tracing fails: wrong input channels
    assert flags(net) == before


def test_a_failed_surgery_leaves_the_model_as_it_was(monkeypatch):
    net = models.vgg().eval()
    state = copy.deepcopy(net.state_dict())
    import torch_pruning as tp

    real = tp.pruner.function.LinearPruner.prune_in_channels

    def broken(self, layer, idxs):
        real(self, layer, idxs)
        raise RuntimeError("boom")

    monkeypatch.setattr(tp.pruner.function.LinearPruner, "prune_in_channels", broken)
    with pytest.raises(RuntimeError, match="boom"):
        prune.remove_channels(net, {"fc1": [0, 1]}, torch.randn(2, 1, 8, 8))
    assert net.fc1.out_features == 32 and net.fc2.in_features == 32
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def test_checkpoints_refuse_another_model_or_other_arguments(tmp_path):
    batches_ = [torch.randn(2, 1, 8, 8) for _ in range(3)]
    pozfast.apoz(models.vgg(), batches_, progress=False, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="another model"):
        pozfast.apoz(models.DigitsCNN(width=4, fc=32), batches_, progress=False, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="other arguments"):
        pozfast.apoz(models.vgg(), batches_, progress=False, checkpoint=tmp_path / "c.pt", layers=["relu1"])
    with pytest.raises(ValueError, match="holds 3"):
        pozfast.apoz(models.vgg(), batches_[:2], progress=False, checkpoint=tmp_path / "c.pt")
    with pytest.raises(ValueError, match="max_batches"):
        pozfast.apoz(models.vgg(), batches_, progress=False, checkpoint=tmp_path / "c.pt", max_batches=1)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        pozfast.apoz(models.vgg(), batches_, progress=False, checkpoint=tmp_path / "junk.pt")

    gen = torch.Generator().manual_seed(0)
    train, val = loaders(torch.randn(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen), batch=8)
    kwargs = dict(layers=["fc1"], rule=prune.Rule("ratio", 0.2), fine_tune_epochs=0, progress=False,
                  checkpoint_dir=tmp_path / "trim")
    torch.manual_seed(0)
    first = prune.trim(models.vgg(), train, val, rounds=2, **kwargs)
    with pytest.raises(ValueError, match="holds 2 finished rounds"):
        prune.trim(models.vgg(), train, val, rounds=1, **kwargs)
    with pytest.raises(ValueError, match="another model"):
        prune.trim(models.DigitsCNN(width=8, fc=40), train, val, rounds=2, **kwargs)
    with pytest.raises(ValueError, match="other arguments"):
        prune.trim(models.vgg(), train, val, rounds=2, **{**kwargs, "rule": prune.Rule("ratio", 0.3)})
    more = prune.trim(models.vgg(), train, val, rounds=3, **kwargs)
    assert more.rows[:3] == first.rows and len(more.rows) == 4


# --- what is counted ------------------------------------------------------------------------------

def test_relus_outside_the_tracked_forward_are_not_counted():
    student, teacher = models.mlp().eval(), models.mlp().eval()
    data = [torch.randn(4, 10) for _ in range(3)]
    plain = pozfast.apoz(student, data, progress=False)
    with torch.no_grad(), pozfast.track_apoz(student) as tracker:
        for x in data:
            out = student(x)
            F.relu(out - teacher(x)).sum()  # a loss and a teacher model: not the student's activations
    report = tracker.report()
    assert report.layers == plain.layers
    assert all(torch.equal(report[k].zeros, plain[k].zeros) for k in plain.layers)


def test_submodule_tracker_counts_only_its_submodule():
    net = models.vgg().eval()
    x = torch.randn(4, 1, 8, 8)
    whole = pozfast.apoz(net, [x], progress=False)
    with torch.no_grad(), pozfast.track_apoz(net.features) as tracker:
        net(x)
    report = tracker.report()
    assert report.layers == [k.removeprefix("features.") for k in whole.layers if k.startswith("features.")]
    assert all(torch.equal(report[k].zeros, whole["features." + k].zeros) for k in report.layers)


def test_trackers_nest():
    net = models.ResNetish().eval()
    data = [torch.randn(3, 3, 6, 6) for _ in range(2)]
    ref = pozfast.apoz(net, data, progress=False)
    with torch.no_grad(), pozfast.track_apoz(net) as outer:
        with pozfast.track_apoz(net) as same, pozfast.track_apoz(net.layer1) as sub:
            net(data[0])
        inner = pozfast.apoz(net, data[1:], progress=False)  # apoz() inside a tracker
    for key in ref.layers:
        assert torch.equal(outer.report()[key].zeros, ref[key].zeros)
    first = pozfast.apoz(net, data[:1], progress=False)
    assert all(torch.equal(same.report()[k].zeros, first[k].zeros) for k in first.layers)
    assert sub.report().layers == [k.removeprefix("layer1.") for k in ref.layers if k.startswith("layer1.")]
    assert all(torch.equal(inner[k].zeros, ref[k].zeros - first[k].zeros) for k in ref.layers)


def test_a_forward_cut_short_counts_nothing(tmp_path):
    net = models.vgg().eval()
    data = [torch.randn(5, 1, 8, 8) for _ in range(5)]
    full = pozfast.apoz(net, data, progress=False)
    calls = {"n": 0}
    original = net.relu1.forward

    def interrupt_third_batch(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # after the conv ReLUs of batch 3 were counted
        return original(x)

    net.relu1.forward = interrupt_third_batch
    with pytest.raises(KeyboardInterrupt):
        pozfast.apoz(net, data, progress=False, checkpoint=tmp_path / "c.pt")
    net.relu1.forward = original
    resumed = pozfast.apoz(net, data, progress=False, checkpoint=tmp_path / "c.pt")
    for key in full.layers:
        assert torch.equal(resumed[key].zeros, full[key].zeros) and resumed[key].examples == 25


def test_a_forward_that_raises_inside_the_with_counts_nothing():
    """The forwards around it count in full: its counts, elements and examples are all dropped."""
    net = models.ResNetish().eval()
    data = [torch.randn(3, 3, 6, 6) for _ in range(3)]
    ref = pozfast.apoz(net, [data[0], data[2]], progress=False)
    original = net.layer1[1].forward

    def fails(x):
        raise RuntimeError("boom")  # after the ReLUs of the stem and of layer1.0 were counted

    with torch.no_grad(), pozfast.track_apoz(net) as tracker:
        net(data[0])
        net.layer1[1].forward = fails
        with pytest.raises(RuntimeError, match="boom"):
            net(data[1])
        net.layer1[1].forward = original
        net(data[2])
    report = tracker.report()
    assert tracker.batches == 2 and report.layers == ref.layers
    for key in ref.layers:
        got, want = report[key], ref[key]
        assert torch.equal(got.zeros, want.zeros) and (got.total, got.examples) == (want.total, want.examples) == \
            (want.total, 6), key


class PartlyEager(nn.Module):
    """A model whose inner block torch.compile leaves eager: its ReLU runs outside the compiled graph."""

    def __init__(self):
        super().__init__()
        self.a, self.inner, self.b = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    @torch.compiler.disable
    def block(self, x):
        return torch.relu(self.inner(x))

    def forward(self, x):
        return self.b(self.block(torch.relu(self.a(x))))


def test_compiled_model_with_an_eager_part_counts_every_element_and_example():
    torch.manual_seed(0)
    net, xs = PartlyEager().eval(), [torch.randn(5, 8) for _ in range(4)]
    eager = pozfast.apoz(net, xs, progress=False)
    compiled = torch.compile(net)
    with torch.no_grad(), pozfast.track_apoz(compiled) as tracker:
        for x in xs:
            compiled(x)
    report = tracker.report()
    assert report.layers == eager.layers and tracker.batches == 4
    for key in eager.layers:
        got, want = report[key], eager[key]
        assert torch.equal(got.zeros, want.zeros) and (got.total, got.examples) == (want.total, want.examples) == \
            (20, 20), key


def test_a_compiled_function_calling_a_tracked_model_compiles_once_over_many_with_blocks():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    fn = torch.compile(lambda x: net(x) * 2)
    x = torch.randn(5, 8)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch.no_grad():
        for _ in range(5):
            with pozfast.track_apoz(net) as tracker:
                fn(x)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs <= 2  # not one per with
    assert tracker.report()["1"].examples == 5


# --- exact removal of dead channels -------------------------------------------------------------------

def test_remove_dead_folds_batchnorm_constants_exactly():
    net = models.randomize_batchnorm(models.CrepeLike(padding=0)).eval()
    models.kill_channels(net.conv1, [1, 4, 6])
    models.kill_channels(net.conv2, [2])  # no bias: dead only where the weights give negatives, so kill via weights
    with torch.no_grad():
        net.conv2.weight[2] = -net.conv2.weight[2].abs()
    x = torch.rand(16, 1, 8, 8)
    before = net(x)
    report = pozfast.apoz(net, [x], progress=False)
    summary = prune.remove_dead(net, report, x, exact=True)
    assert summary.removed["conv1"] == [1, 4, 6] and 2 in summary.removed["conv2"]
    assert summary.folded.keys() >= {"conv2", "fc1"} and not summary.approximated
    assert net.conv1.out_channels == 5 and net.bn1.num_features == 5 and net.conv2.bias is not None
    after = net(x)
    assert float((after - before).norm() / before.norm()) <= 1e-5
    assert summary.max_rel_change <= 1e-5 and summary.params_after < summary.params_before
    assert "removed" in summary.summary()


def test_remove_dead_reports_or_refuses_zero_padding():
    net = models.randomize_batchnorm(models.CrepeLike(padding=1)).eval()
    models.kill_channels(net.conv1, [0, 5])
    x = torch.rand(8, 1, 8, 8)
    report = pozfast.apoz(net, [x], progress=False)
    original = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="conv2"):
        prune.remove_dead(net, report, x, exact=True)
    assert net.conv1.out_channels == 8 and all(torch.equal(net.state_dict()[k], v) for k, v in original.items())
    summary = prune.remove_dead(net, report, x)
    assert list(summary.approximated) == ["conv2"] and summary.approximated["conv2"]["max_abs"] > 0
    assert summary.max_abs_change > 0 and net.conv1.out_channels == 6


def test_remove_dead_on_a_resnet_with_forced_dead_channels():
    model = hf.resnet(depths=(2, 2), widths=(8, 16))
    models.randomize_batchnorm(model, seed=3)
    modules = dict(model.named_modules())
    block = "resnet.encoder.stages.1.layers.0.layer.0"
    models.kill_channels(modules[block + ".convolution"], [2, 9, 15], modules[block + ".normalization"])
    x = torch.randn(6, 3, 16, 16)
    before = model(x).logits
    summary = prune.remove_dead(model, pozfast.apoz(model, [x], progress=False), x)
    assert {2, 9, 15} <= set(summary.removed[block + ".convolution"])  # and any dead by chance
    assert modules[block + ".convolution"].out_channels == 16 - len(summary.removed[block + ".convolution"])
    assert float((model(x).logits - before).norm() / before.norm()) <= 1e-5


def test_trim_command_remove_dead(tmp_path):
    import subprocess
    import sys

    spec = tmp_path / "spec.py"
    spec.write_text(
        "import torch\nfrom tests import models\nfrom torch.utils.data import DataLoader, TensorDataset\n"
        "def model():\n    torch.manual_seed(0)\n    m = models.vgg()\n"
        "    models.kill_channels(m.fc1, [0, 1, 2])\n    return m\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n"
        "    return DataLoader(TensorDataset(torch.rand(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), "
        "generator=g)), batch_size=16)\n")
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "pozfast.cli", "trim", "--model", f"{spec}:model", "--train-data", f"{spec}:data",
           "--val-data", f"{spec}:data", "--layers", "fc1", "--rule", "ratio", "--amount", "0.1", "--rounds", "1",
           "--epochs", "0", "--remove-dead", "--out", str(tmp_path / "out"), "--no-progress"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, check=False)
    assert res.returncode == 0, res.stderr
    assert "dead channels removed first" in res.stdout and "| round |" in res.stdout
