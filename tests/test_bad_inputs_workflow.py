"""Bad inputs to the APoZ, trimming and command-line workflow, one case per line: the call, the exception it
must raise and what its message must say (the argument or file at fault and what was wrong with it). No
refused call may change the model."""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import pozfast
from pozfast import prune
from pozfast.cli import main
from tests import models

_TMP = tempfile.TemporaryDirectory(prefix="pozfast-bad-inputs-")
TMP = Path(_TMP.name)
torch.manual_seed(0)
NET = models.mlp()  # Linear "0" (10 -> 32), ReLU "1", Linear "2", ReLU "3", Linear "4" (-> 5 classes)
X = torch.randn(8, 10)
Y = torch.randint(0, 5, (8,))
DATA = [(X, Y)]
SPEC = """import torch
from torch import nn
def model():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))
def data():
    return [(torch.randn(8, 10), torch.randint(0, 5, (8,)))]
def broken():
    raise RuntimeError("no weights here")
"""


class NoLogits(nn.Module):
    def forward(self, x):
        return {"features": torch.relu(x)}


class CommandFailed(Exception):
    """The command line's one ``error:`` line, when it exited with status 2."""


def file(name: str, content: str | bytes = b"") -> str:
    path = TMP / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def saved(name: str, obj: object) -> str:
    path = str(TMP / name)
    torch.save(obj, path)
    return path


def folder(name: str) -> str:
    path = TMP / name
    path.mkdir(exist_ok=True)
    return str(path)


@cache
def report() -> pozfast.APoZReport:
    return pozfast.apoz(NET, DATA, progress=False)


@cache
def other_model_checkpoint() -> str:
    other = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 5))
    path = str(TMP / "other-model.pt")
    pozfast.apoz(other, DATA, progress=False, checkpoint=path)
    return path


@cache
def trim_checkpoint() -> str:
    path = str(TMP / "trim-run")
    prune.trim(copy.deepcopy(NET), DATA, DATA, layers=["0"], rule=prune.Rule("ratio", 0.25), rounds=1,
               fine_tune_epochs=0, progress=False, checkpoint_dir=path)
    return path


def state(**changes) -> dict:
    """A tracker state of NET with some entries replaced (None: left out)."""
    full = {**pozfast.track_apoz(NET).state_dict(), **changes}
    return {k: v for k, v in full.items() if v is not None}


def track(**kwargs) -> pozfast.APoZReport:
    with pozfast.track_apoz(NET, **kwargs) as tracker, torch.no_grad():
        NET(X)
    return tracker.report()


def twice(tracker: pozfast.APoZTracker) -> None:
    with tracker, tracker:
        pass


def apoz(**kwargs) -> pozfast.APoZReport:
    return pozfast.apoz(kwargs.pop("model", NET), kwargs.pop("data", DATA), progress=False, **kwargs)


def sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD(NET.parameters(), lr=0.1)


def trim(**kwargs) -> prune.TrimResult:
    options = dict(layers=["0"], rounds=1, fine_tune_epochs=1, progress=False)
    return prune.trim(NET, kwargs.pop("train", DATA), kwargs.pop("val", DATA), **{**options, **kwargs})


def load(content: str | bytes) -> pozfast.APoZReport:
    return pozfast.APoZReport.load(file("report.json", content))


def cli(*argv: str) -> None:
    """Run the command line in this process; its error line comes back as CommandFailed."""
    argv = [*argv, *(("--out", str(TMP / "out")) if "--out" not in argv else ())]
    err = io.StringIO()
    with redirect_stderr(err):
        status = main([*argv, "--no-progress"] if argv[0] in ("apoz", "trim", "rdm") else argv)
    lines = err.getvalue().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, lines)
    raise CommandFailed(lines[0])


def spec(function: str) -> str:
    return f"{file('spec.py', SPEC)}:{function}"


LAYER = ('{"format": "pozfast-apoz", "version": 2, "layers": [{"key": "1", "module": "1", "call": 0, '
         '"channel_dim": 1, "examples": 8, "total": 8, "producers": ["0"], %s}]}')

CASES = [
    # pozfast.apoz
    (lambda: apoz(model=object()), TypeError, "model must be a torch.nn.Module, got object"),
    (lambda: apoz(data=5), TypeError, "data must be an iterable of batches"),
    (lambda: apoz(data=[]), ValueError, "data yielded no batches"),
    (lambda: apoz(data=[(torch.randn(8, 7), Y)]), RuntimeError, "batch 0 of data"),
    (lambda: apoz(max_batches=True), TypeError, "max_batches must be an int, got bool"),
    (lambda: apoz(max_batches=2.5), TypeError, "max_batches must be an int, got float"),
    (lambda: apoz(max_batches=0), ValueError, "max_batches must be >= 1"),
    (lambda: apoz(checkpoint_every=0), ValueError, "checkpoint_every must be >= 1"),
    (lambda: apoz(layers="1"), TypeError, "layers must be a list of names, got the string '1'"),
    (lambda: apoz(layers=["nope"]), KeyError, "layer 'nope' is not a ReLU call site"),
    (lambda: apoz(device="nope"), ValueError, "device must be a torch device"),
    (lambda: apoz(device="cuda:99"), ValueError, "device 'cuda:99' is not available"),
    (lambda: apoz(channel_dims=5), TypeError, "channel_dims must be a dict"),
    (lambda: apoz(channel_dims={"1": "1"}), TypeError, r"channel_dims\['1'\] must be an int"),
    (lambda: apoz(channel_dims={"1": 2}), ValueError, "channel_dims gives axis 2"),
    (lambda: apoz(channel_dims={"relu": 1}), KeyError, "channel_dims names 'relu'"),
    (lambda: apoz(inputs=5), TypeError, "inputs must be a function"),
    (lambda: apoz(checkpoint=file("junk.pt", b"not a checkpoint")), ValueError, "cannot be read"),
    (lambda: apoz(checkpoint=file("empty.pt", b"")), ValueError, "cannot be read"),
    (lambda: apoz(checkpoint=saved("weights.pt", {"weight": X})), ValueError, "is not a pozfast APoZ checkpoint"),
    (lambda: apoz(checkpoint=folder("a-folder")), ValueError, "checkpoint .* is a folder"),
    (lambda: apoz(checkpoint=other_model_checkpoint()), ValueError, "another model"),
    # track_apoz, APoZTracker
    (lambda: pozfast.track_apoz(object()), TypeError, "model must be a torch.nn.Module"),
    (lambda: pozfast.track_apoz(NET, layers="1"), TypeError, "layers must be a list of names"),
    (lambda: track(layers=["nope"]), KeyError, "layer 'nope'"),
    (lambda: track(channel_dims={"2": 1}), KeyError, "channel_dims names '2'"),
    (lambda: pozfast.track_apoz(NET).report(), ValueError, "no ReLU output was counted"),
    (lambda: twice(pozfast.track_apoz(NET)), RuntimeError, "already active"),
    (lambda: pozfast.track_apoz(NET).load_state_dict("state"), ValueError, "not a pozfast APoZ tracker state"),
    (lambda: pozfast.track_apoz(NET).load_state_dict(state(sites=None)), ValueError, "tracker state is malformed"),
    (lambda: pozfast.track_apoz(NET).load_state_dict(state(model="0" * 16)), ValueError, "another model"),
    # APoZReport.load, report[key]
    (lambda: pozfast.APoZReport.load(TMP / "missing.json"), FileNotFoundError, "missing.json"),
    (lambda: load(b"\x80not json"), ValueError, "report.json is not a pozfast APoZ report"),
    (lambda: load("[1, 2]"), ValueError, "report.json is not a pozfast APoZ report"),
    (lambda: load('{"format": "other"}'), ValueError, "report.json is not a pozfast APoZ report"),
    (lambda: load(LAYER % '"zeros": "12"'), ValueError, "layer 0 is malformed"),
    (lambda: load(LAYER % '"zeros": [9, 0]'), ValueError, r"zeros must be within \[0, total\]"),
    (lambda: load(LAYER % '"channels": 3, "zeros": [1, 0]'), ValueError, "2 zero counts for 3 channels"),
    (lambda: report()["missing"], KeyError, "no layer 'missing' in this report"),
    # Rule
    (lambda: prune.Rule("mean"), ValueError, "rule kind must be"),
    (lambda: prune.Rule("threshold", -0.5), ValueError, r"threshold rule's amount must be a finite number in \[0, 1\]"),
    (lambda: prune.Rule("threshold", 1.5), ValueError, "threshold rule's amount must be a finite number"),
    (lambda: prune.Rule("threshold", float("nan")), ValueError, "threshold rule's amount must be a finite number"),
    (lambda: prune.Rule("threshold", "0.5"), TypeError, "amount must be a number, got str"),
    (lambda: prune.Rule("ratio", 1.0), ValueError, r"ratio rule's amount must be a finite number in \[0, 1\)"),
    (lambda: prune.Rule("std", float("inf")), ValueError, "std rule's amount must be a finite number"),
    (lambda: prune.Rule(min_keep=-1), ValueError, "min_keep must be >= 0"),
    (lambda: prune.Rule(min_keep=1.5), ValueError, r"min_keep \(a fraction when a float\) must be"),
    (lambda: prune.Rule(min_keep=True), TypeError, "min_keep .* got bool"),
    # remove_channels, coupled_groups
    (lambda: prune.remove_channels(NET, ["0"], X), TypeError, "plan must be a dict"),
    (lambda: prune.remove_channels(NET, {"0": "12"}, X), TypeError, r"plan\['0'\] must be a list of channel indices"),
    (lambda: prune.remove_channels(NET, {"0": 3}, X), TypeError, r"plan\['0'\] must be a list of channel indices"),
    (lambda: prune.remove_channels(NET, {"0": [True]}, X), TypeError, r"plan\['0'\]"),
    (lambda: prune.remove_channels(NET, {"0": [1.5]}, X), TypeError, r"plan\['0'\] indices must be an int, got float"),
    (lambda: prune.remove_channels(NET, {"0": [32]}, X), IndexError, "indices outside"),
    (lambda: prune.remove_channels(NET, {"1": [0]}, X), TypeError, "only Conv and Linear"),
    (lambda: prune.remove_channels(NET, {"nope": [0]}, X), KeyError, "not a module of the model"),
    (lambda: prune.remove_channels(NET, {"0": [0]}, X, inputs=5), TypeError, "inputs must be a function"),
    (lambda: prune.coupled_groups(NET, "0", X), TypeError, "layers must be a list of names"),
    # resolve_layers, relu_keys, select_channels, remove_dead
    (lambda: prune.resolve_layers(report(), "0"), TypeError, "layers must be a list of names"),
    (lambda: prune.resolve_layers(report(), ["nope"]), KeyError, "layer 'nope'"),
    (lambda: prune.resolve_layers(report(), {"0": "nope"}), KeyError, "no layer 'nope'"),
    (lambda: prune.resolve_layers("report", ["0"]), TypeError, "report must be a pozfast.APoZReport, got str"),
    (lambda: prune.relu_keys(NET, "0", X), TypeError, "layers must be a list of names"),
    (lambda: prune.select_channels(report(), ["0"], "threshold"), TypeError, "rule must be a pozfast.prune.Rule"),
    (lambda: prune.select_channels(report(), ["0"], prune.Rule(), [["nope"]]), KeyError, "groups name 'nope'"),
    (lambda: prune.remove_dead(NET, "report", X), TypeError, "report must be a pozfast.APoZReport"),
    (lambda: prune.remove_dead(NET, report(), X, layers="0"), TypeError, "layers must be a list of names"),
    (lambda: prune.remove_dead(models.mlp(), apoz(model=models.Functional(), data=[torch.randn(2, 3, 8, 8)]), X),
     ValueError, "measured on another model"),
    (lambda: prune.remove_dead(NET, load(LAYER % '"zeros": [8, 0]'), X), ValueError, "has 2 channels but"),
    # evaluate, fine_tune, save_model
    (lambda: prune.evaluate(NET, 5), TypeError, "data must be an iterable of batches"),
    (lambda: prune.evaluate(NET, [X]), TypeError, "cannot tell the targets of a batch of type Tensor"),
    (lambda: prune.evaluate(NET, [(X, Y + 5)]), ValueError, r"targets must be class indices in \[0, 5\)"),
    (lambda: prune.evaluate(NET, [(X, Y.float())]), TypeError, "targets must be integer class indices"),
    (lambda: prune.evaluate(NoLogits(), DATA), TypeError, "cannot find logits"),
    (lambda: prune.evaluate(NET, DATA, "nope"), ValueError, "device must be a torch device"),
    (lambda: prune.evaluate(NET, DATA, targets=5), TypeError, "targets must be a function"),
    (lambda: prune.fine_tune(NET, DATA, -1, sgd()), ValueError, "epochs must be >= 0"),
    (lambda: prune.fine_tune(NET, DATA, True, sgd()), TypeError, "epochs must be an int, got bool"),
    (lambda: prune.fine_tune(NET, DATA, 1, "sgd"), TypeError, "optimizer must be a torch.optim.Optimizer"),
    (lambda: prune.fine_tune(NET, [], 1, sgd()), ValueError, "data yielded no batches"),
    (lambda: prune.fine_tune(NET, iter(DATA), 2, sgd()), TypeError, "data must be iterable more than once"),
    (lambda: prune.fine_tune(NET, DATA, 1, sgd(), loss_fn=lambda out, batch: 1.0), TypeError,
     "loss_fn must return a scalar tensor"),
    (lambda: prune.save_model(NET, file("a-file"), X), NotADirectoryError, "folder .* is not a folder"),
    # trim
    (lambda: trim(layers=[]), ValueError, "layers is empty"),
    (lambda: trim(layers="0"), TypeError, "layers must be a list of names"),
    (lambda: trim(rule="threshold"), TypeError, "rule must be a pozfast.prune.Rule"),
    (lambda: trim(rounds=True), TypeError, "rounds must be an int, got bool"),
    (lambda: trim(rounds=0), ValueError, "rounds must be >= 1"),
    (lambda: trim(seed="1"), TypeError, "seed must be an int, got str"),
    (lambda: trim(fine_tune_epochs=-1), ValueError, "fine_tune_epochs must be >= 0"),
    (lambda: trim(apoz_batches=0), ValueError, "apoz_batches must be >= 1"),
    (lambda: trim(val=5), TypeError, "val_data must be an iterable of batches"),
    (lambda: trim(val=iter(DATA)), TypeError, "val_data must be iterable more than once"),
    (lambda: trim(train=iter(DATA)), TypeError, "train_data must be iterable more than once"),
    (lambda: trim(train=[]), ValueError, "train_data yielded no batches"),
    (lambda: trim(optimizer_factory=lambda params: "sgd"), TypeError, "optimizer_factory must return a torch.optim"),
    (lambda: trim(checkpoint_dir=file("not-a-folder")), NotADirectoryError, "checkpoint_dir .* is not a folder"),
    (lambda: trim(checkpoint_dir=trim_checkpoint(), rule=prune.Rule("ratio", 0.5)), ValueError, "other arguments"),
    (lambda: trim(checkpoint_dir=Path(file("junk/state.pt", b"junk")).parent), ValueError, "cannot be read"),
    # the command line
    (lambda: cli("apoz", "--model", "missing.py:model", "--data", "missing.py:data"), CommandFailed, "no file"),
    (lambda: cli("apoz", "--model", spec("broken"), "--data", spec("data")), CommandFailed, "broken .* raised"),
    (lambda: cli("apoz", "--model", spec("data"), "--data", spec("data")), CommandFailed, "model must be a torch"),
    (lambda: cli("apoz", "--out", file("out-file"), "--model", spec("model"), "--data", spec("data")), CommandFailed,
     "--out .* is not a folder"),
    (lambda: cli("apoz", "--model", spec("model"), "--data", spec("data"), "--device", "nope"), CommandFailed,
     "device must be a torch device"),
    (lambda: cli("apoz", "--model", spec("model"), "--data", spec("data"), "--max-batches", "0",
                 "--out", str(TMP / "apoz-out")), CommandFailed, "max_batches must be >= 1"),
    (lambda: cli("trim", "--model", spec("model"), "--train-data", spec("data"), "--val-data", spec("data"),
                 "--layers", "0", "--rule", "ratio", "--amount", "1.5", "--out", str(TMP / "t1")), CommandFailed,
     "ratio rule's amount"),
    (lambda: cli("trim", "--model", spec("model"), "--train-data", spec("data"), "--val-data", spec("data"),
                 "--layers", "0", "--rounds", "0", "--out", str(TMP / "t2")), CommandFailed, "rounds must be >= 1"),
    (lambda: cli("demo", "--rounds", "0", "--out", str(TMP / "demo")), CommandFailed, "--rounds must be >= 1"),
    (lambda: cli("rdm", file("corrupt.npy", b"\x93NUMPY garbage"), "--out", str(TMP / "r")), CommandFailed,
     "cannot read"),
    (lambda: cli("rdm", file("features.txt", "1 2\n3 4\n"), "--out", str(TMP / "r")), CommandFailed,
     "expected a .npy or .pt file"),
]


def snapshot(model: nn.Module) -> tuple:
    flags = [(m.training, len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    return repr(model), flags, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("call, error, message", CASES)
def test_bad_input_is_refused_clearly(call, error, message):
    before = snapshot(NET)
    with pytest.raises(error, match=message):
        call()
    after = snapshot(NET)
    assert after[:2] == before[:2] and after[2].keys() == before[2].keys()
    assert all(torch.equal(after[2][k], v) for k, v in before[2].items()), "a refused call changed the model"


def test_numpy_integers_and_index_arrays_are_accepted():
    model = copy.deepcopy(NET)
    assert pozfast.apoz(model, DATA * 2, progress=False, max_batches=np.int64(1))["1"].examples == 8
    assert prune.Rule("ratio", np.float32(0.5), min_keep=np.int64(2)).min_keep == 2
    prune.remove_channels(model, {"0": torch.tensor([1, 2])}, X)
    prune.remove_channels(model, {"0": np.array([0])}, X)
    assert model[0].out_features == 29


def test_command_line_error_is_one_line_without_traceback():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-m", "pozfast.cli", "apoz", "--model", spec("model"), "--data",
                             spec("data"), "--device", "nope", "--out", str(TMP / "sub")],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 2 and result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith("error: device must be a torch device")
