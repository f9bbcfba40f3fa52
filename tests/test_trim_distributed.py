"""prune.trim under torch.distributed: 2 gloo processes on CPU against one process on the union of their data."""

import gc
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from pozfast import prune
from tests import models

LAYERS = ["conv2", "fc1"]
RULE = prune.Rule("ratio", 0.25, min_keep=1)


def datasets():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


class KillAt:
    """A targets function that raises on its n-th call (a run cut short inside a round)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("killed")
        return batch[1]


def run(mode: str, out: Path, distributed: bool, ft: int, rounds: int = 2):
    """One trim run; with ``distributed`` every rank sees its DistributedSampler shard, batches of 8 (one
    process: the whole data in batches of 16, so that one step sees the same examples)."""
    train_set, val_set = datasets()
    if distributed:
        train = DataLoader(train_set, batch_size=8, sampler=DistributedSampler(train_set, shuffle=False))
        val = DataLoader(val_set, batch_size=8, sampler=DistributedSampler(val_set, shuffle=False))
    else:
        train, val = DataLoader(train_set, batch_size=16), DataLoader(val_set, batch_size=16)
    rank = torch.distributed.get_rank() if distributed else 0
    layers = ["conv2"] if mode == "disagree" and rank == 1 else LAYERS
    if mode == "no-val" and rank == 1:
        val = []
    model = models.PlainCNN()
    if distributed:
        model = nn.parallel.DistributedDataParallel(model)
    targets = KillAt(7) if mode == "killed" else None  # call 7: round 2's first evaluation, after surgery
    result = prune.trim(model, train, val, layers=layers, rule=RULE, rounds=rounds, fine_tune_epochs=ft,
                        optimizer_factory=sgd, progress=False, checkpoint_dir=out / "ckpt", targets=targets,
                        sync_timeout=60)
    torch.save({"rows": result.rows, "state": result.model.state_dict()}, out / f"rank{rank}.pt")


def _worker(rank, world, init_file, out_dir, mode, ft, rounds):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        run(mode, Path(out_dir), True, ft, rounds)
    finally:
        torch.distributed.destroy_process_group()


def spawn(tmp: Path, mode: str, ft: int = 0, name: str = "init", rounds: int = 2):
    mp.spawn(_worker, args=(2, str(tmp / name), str(tmp), mode, ft, rounds), nprocs=2)


def results(path: Path, rank: int = 0):
    return torch.load(path / f"rank{rank}.pt", weights_only=False)


def same_params(a: dict, b: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    """Equal parameters: bit for bit by default, else within the tolerances."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The one-process run on the union of the data, without fine-tuning."""
    out = tmp_path_factory.mktemp("single")
    run("plans", out, False, 0)
    return results(out)


def test_two_ranks_plan_like_one_process_on_the_union(tmp_path, single):
    spawn(tmp_path, "plans")
    r0, r1 = results(tmp_path, 0), results(tmp_path, 1)
    same_params(r0["state"], r1["state"])
    assert r0["rows"] == r1["rows"] == single["rows"]  # plans, widths and accuracies over the union
    same_params(r0["state"], single["state"])
    assert json.loads((tmp_path / "ckpt" / "trim.json").read_text())["rows"][2]["removed"] == {
        k: list(v) for k, v in single["rows"][2]["removed"].items()}


def test_fine_tuning_on_two_ranks_equals_the_doubled_batch(tmp_path):
    spawn(tmp_path, "plans", ft=2, rounds=1)
    r0, r1 = results(tmp_path, 0), results(tmp_path, 1)
    same_params(r0["state"], r1["state"])
    (tmp_path / "one").mkdir()
    run("plans", tmp_path / "one", False, 2, rounds=1)
    one = results(tmp_path / "one")
    assert r0["rows"][1]["removed"] == one["rows"][1]["removed"]
    assert not torch.equal(one["state"]["fc2.bias"], models.PlainCNN().fc2.bias.detach())  # it trained
    same_params(r0["state"], one["state"], rtol=1e-4, atol=1e-5)


def test_kill_midway_and_resume_with_two_and_with_one_process(tmp_path, single):
    with pytest.raises(Exception, match="killed"):
        spawn(tmp_path, "killed", name="init1")
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=False)
    assert len(state["rows"]) == 2  # round 1 finished, round 2 cut short
    spawn(tmp_path, "resume", name="init2")
    assert results(tmp_path)["rows"] == single["rows"]
    # the same checkpoint, resumed by one process: world size does not enter the plan or the model
    (tmp_path / "one" / "ckpt").mkdir(parents=True)
    torch.save(state, tmp_path / "one" / "ckpt" / "state.pt")
    run("resume", tmp_path / "one", False, 0)
    assert results(tmp_path / "one")["rows"] == single["rows"]


@pytest.mark.parametrize("mode, match", [("disagree", "ranks disagree"), ("no-val", "no validation batches")])
def test_ranks_that_disagree_or_lack_data_fail_together(tmp_path, mode, match):
    with pytest.raises(Exception, match=match):
        spawn(tmp_path, mode)
    assert not (tmp_path / "ckpt" / "state.pt").exists()


def test_ddp_model_without_a_process_group_is_refused(tmp_path, monkeypatch):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(models.PlainCNN())
        train_set, val_set = datasets()
        # The group looks gone while it is still up: a DDP reducer freed after its gloo group was destroyed
        # can hang in gloo, so the wrapper goes before the group does.
        with monkeypatch.context() as patch, pytest.raises(RuntimeError, match="no torch.distributed process group"):
            patch.setattr(torch.distributed, "is_initialized", lambda: False)
            prune.trim(ddp, DataLoader(train_set), DataLoader(val_set), layers=LAYERS)
        del ddp
        gc.collect()
    finally:
        torch.distributed.destroy_process_group()


def test_trim_command_under_torchrun(tmp_path):
    import os
    import subprocess
    import sys

    spec = tmp_path / "spec.py"
    spec.write_text(
        "from torch.utils.data import DataLoader, DistributedSampler\n"
        "from tests import models\nfrom tests.test_trim_distributed import datasets\n"
        "def model():\n    return models.PlainCNN()\n"
        "def train():\n    s = datasets()[0]\n    return DataLoader(s, batch_size=8, sampler=DistributedSampler(s, shuffle=False))\n"
        "def val():\n    s = datasets()[1]\n    return DataLoader(s, batch_size=8, sampler=DistributedSampler(s, shuffle=False))\n")
    root = Path(__file__).resolve().parents[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "pozfast.cli", "trim", "--model",
           f"{spec}:model", "--train-data", f"{spec}:train", "--val-data", f"{spec}:val", "--layers", *LAYERS,
           "--rule", "ratio", "--amount", "0.25", "--min-keep", "1", "--rounds", "2", "--epochs", "0",
           "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]  # gloo, also on a GPU machine
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env, check=False, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("| round |") == 1  # rank 0 reports
    rows = json.loads((tmp_path / "out" / "trim.json").read_text())["rows"]
    assert [r["widths"] for r in rows] == [{"conv2": 8, "fc1": 24}, {"conv2": 6, "fc1": 18}, {"conv2": 5, "fc1": 14}]


@pytest.mark.parametrize("gpus,device,want", [(2, None, ("nccl", "cuda:1")), (2, "cuda", ("nccl", "cuda:1")),
                                              (1, None, ("gloo", None)), (2, "cpu", ("gloo", "cpu")),
                                              (0, None, ("gloo", None))])
def test_the_command_line_puts_each_torchrun_rank_on_its_gpu_when_each_has_one(monkeypatch, gpus, device, want):
    # Under NCCL a CPU model cannot be wrapped in DDP, and two ranks cannot share one GPU: NCCL and the rank's
    # GPU when every local rank has one, else gloo where the model is.
    from pozfast import cli

    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: joined.append(index))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: joined.append(backend))
    got = cli._join_torchrun(device)
    assert (joined[-1], got) == want
    assert joined[:-1] == ([1] if want[0] == "nccl" else [])
