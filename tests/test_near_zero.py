"""pozfast.near_zero_counts / relu_near_zero_counts and their ops against ``((|a| <= tau) & mask).sum``."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import pozfast
from pozfast.ops.near_zero import _layout, near_zero_count_, relu_near_zero_count, tracked_relu
from tests.conftest import DTYPES, assert_bitwise_equal, available_backends, special_values
from tests.reference import near_zero_reference

THRESHOLD_SETS = [
    (0.0,),
    (0.0, 0.01, 0.1, 0.5),  # 0.01 and 0.1 are not representable: rounded to the dtype
    (1e-5,),
    tuple(np.linspace(0.0, 3.0, 31).tolist()) + (1e10,),  # 32 of them; 1e10 rounds to inf in float16
]

# (shape, channel_dim, layout, mask): layout as in test_relu_count ("transposed": a permuted view,
# "strided": every other element); mask: None, "rows" (bool over dim 0), "tokens" (int64 over dims 0 and
# 1), "ints" (int32 over dim 0 with values 0, 1, 2, -3).
CASES = [
    ((1, 1), 1, "contiguous", None),
    ((1, 1), 1, "contiguous", "rows"),
    ((7, 3), 1, "contiguous", "rows"),
    ((37, 5), 1, "contiguous", "ints"),
    ((2, 3000), 1, "contiguous", None),
    ((3, 7, 130), 1, "contiguous", "rows"),           # long rows (inner >= 64)
    ((3, 5, 63), 1, "contiguous", None),             # short rows, inner just below 64
    ((2, 3, 5, 7), 1, "contiguous", "ints"),          # (N, C, H, W), short rows
    ((4, 6, 9, 9), 1, "contiguous", "rows"),          # (N, C, H, W), long rows
    ((2, 3, 5, 7), 1, "channels_last", "rows"),
    ((3, 17, 2, 3), 1, "channels_last", None),
    ((2, 3, 2, 5, 7), 1, "channels_last_3d", "rows"),
    ((2, 9, 33), -1, "contiguous", "tokens"),         # (N, L, C) with an (N, L) token mask
    ((2, 9, 33), 2, "contiguous", "rows"),            # (N, L, C) with an (N,) mask
    ((18, 33), 1, "contiguous", "rows"),              # (N*L, C) with the flattened token mask
    ((3, 17, 1), -1, "contiguous", "tokens"),         # a single channel
    ((5, 7), 0, "contiguous", None),
    ((4, 6, 5), 1, "transposed", "rows"),
    ((6, 4, 5), 2, "transposed", "tokens"),           # the mask's dims are not outermost in memory
    ((4, 6, 10), 1, "strided", "rows"),
    ((2, 6, 4, 10), 1, "strided", None),
    ((4, 20000), 1, "contiguous", "rows"),            # many channels
    ((2, 3, 20000), -1, "contiguous", "tokens"),
]
# Large enough for several threads and slices that split rows and blocks (native and torch backends only).
LARGE_CASES = [
    ((300, 517), 1, "contiguous", "rows"),
    ((3, 5, 7001), 1, "contiguous", "rows"),
    ((64, 40, 6, 6), 1, "channels_last", "rows"),
    ((8, 50, 33, 4), 1, "contiguous", None),
    ((4, 32, 777), -1, "contiguous", "tokens"),
]


def make(shape, dtype, layout, seed):
    if layout == "transposed":
        return special_values(shape[::-1], dtype, seed).permute(*reversed(range(len(shape))))
    if layout == "strided":
        return special_values(shape, dtype, seed)[..., ::2]
    x = special_values(shape, dtype, seed)
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
           "channels_last_3d": torch.channels_last_3d}[layout]
    return x.contiguous(memory_format=fmt)


def with_thresholds(x, thresholds, seed):
    """x with some elements set to +-tau exactly (rounded to x's dtype), where ``<=`` decides."""
    gen = torch.Generator().manual_seed(seed)
    flat = x.clone().reshape(-1)
    if flat.numel():
        taus = torch.tensor(thresholds, dtype=torch.float64)
        picks = torch.randint(0, flat.numel(), (min(flat.numel(), 3 * len(thresholds)),), generator=gen)
        values = taus[torch.arange(picks.numel()) % len(thresholds)]
        signs = torch.where(torch.rand(picks.numel(), generator=gen) < 0.5, -1.0, 1.0).double()
        flat[picks] = (values * signs).to(x.dtype)
    return flat.view(x.shape) if x.is_contiguous() else x.copy_(flat.view(x.shape))


def make_mask(kind, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind is None:
        return None
    if kind == "rows":
        return torch.rand(shape[0], generator=gen) < 0.7
    if kind == "ints":
        return torch.tensor([0, 1, 2, -3])[torch.randint(0, 4, (shape[0],), generator=gen)].int()
    return (torch.rand(shape[:2], generator=gen) < 0.7).long()  # tokens


def case_data(case, dtype, seed):
    shape, cd, layout, mask_kind = case
    thresholds = THRESHOLD_SETS[seed % len(THRESHOLD_SETS)]
    x = with_thresholds(make(shape, dtype, layout, seed), thresholds, seed)
    return x, cd, thresholds, make_mask(mask_kind, shape, seed)


def id_case(case):
    shape, cd, layout, mask = case
    return f"{'x'.join(map(str, shape))}-cd{cd}-{layout}-{mask}"


def check_all_modes(backend, x, cd, thresholds, mask):
    want = near_zero_reference(x, thresholds, cd, mask)
    y_want = torch.relu(x)
    relu_want = near_zero_reference(y_want, thresholds, cd, mask)
    before = x.clone()
    with pozfast.use_backend(backend):
        counts = pozfast.near_zero_counts(x, thresholds, cd, mask=mask)
        assert_bitwise_equal(x, before)  # read-only
        assert counts.dtype == torch.int64 and counts.device == x.device
        assert torch.equal(counts, want), mismatch(counts, want)
        y, counts = pozfast.relu_near_zero_counts(x, thresholds, cd, mask=mask)
        assert_bitwise_equal(y, y_want)
        assert y.stride() == torch.empty_like(x).stride()
        assert torch.equal(counts, relu_want), mismatch(counts, relu_want)
        work = x.clone()
        y, counts = pozfast.relu_near_zero_counts(work, thresholds, cd, mask=mask, inplace=True)
        assert y is work
        assert_bitwise_equal(work, y_want)
        assert torch.equal(counts, relu_want), mismatch(counts, relu_want)


def mismatch(got, want):
    bad = (got != want).nonzero()
    return f"{bad.shape[0]} counts differ; first at {bad[:5].tolist()}: got {got[tuple(bad[0])]}, want " \
           f"{want[tuple(bad[0])]}" if bad.numel() else ""


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=id_case)
def test_matches_reference(backend, dtype, case):
    x, cd, thresholds, mask = case_data(case, dtype, seed=CASES.index(case))
    check_all_modes(backend, x, cd, thresholds, mask)


@pytest.mark.parametrize("backend", [None, *available_backends("cpu")])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=id_case)
def test_tracked_relu_matches_reference_on_every_call(backend, dtype, case):
    """The tracker's entry (layout and backend found once per layout, then reused) adds the same counts
    and returns torch.relu, call after call, in place or not."""
    x, cd, thresholds, mask = case_data(case, dtype, seed=11)
    axis = cd % x.dim()
    y_want = torch.relu(x)
    want = near_zero_reference(y_want, thresholds, cd, mask)
    counts = torch.zeros_like(want)
    with pozfast.use_backend(backend) if backend else contextlib.nullcontext():
        for call in range(3):
            work = x.clone()
            y = tracked_relu(work, counts, tuple(thresholds), axis, mask, inplace=call == 2)
            assert (y is work) == (call == 2)
            assert_bitwise_equal(y, y_want)
            assert y.stride() == torch.empty_like(x).stride()
            assert torch.equal(counts, want * (call + 1)), mismatch(counts, want * (call + 1))


def test_tracked_relu_follows_the_backend_forced_after_its_layout_was_seen(monkeypatch):
    """A forced backend applies from the next call on, though the layout was planned with another."""
    from pozfast.ops import near_zero

    if not pozfast.backends()["cpu-native"].available:
        pytest.skip(pozfast.backends()["cpu-native"].reason)
    x, counts = torch.randn(4, 6, 5), torch.zeros(1, 6, dtype=torch.int64)
    tracked_relu(x.clone(), counts, (0.0,), 1, None, False)  # planned with the default (native) backend
    launched = []
    monkeypatch.setattr(near_zero, "_run", lambda *args: launched.append(args[-1]))
    with pozfast.use_backend("torch"):
        tracked_relu(x.clone(), counts, (0.0,), 1, None, False)
    assert launched == [] and torch.equal(counts, 2 * (torch.relu(x) == 0).sum((0, 2))[None])
    tracked_relu(x.clone(), counts, (0.0,), 1, None, False)
    assert launched == ["cpu-native"]


@pytest.mark.parametrize("backend", available_backends("cpu", triton=False)[:1])  # the native kernels
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LARGE_CASES, ids=id_case)
@pytest.mark.parametrize("threads", [1, 2])
def test_large_and_threaded(backend, dtype, case, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for seed in range(len(THRESHOLD_SETS)):
            x, cd, thresholds, mask = case_data(case, dtype, seed=seed)
            check_all_modes(backend, x, cd, thresholds, mask)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("backend", available_backends("cpu", triton=False))
def test_long_16_bit_rows(backend):
    # More hits than a 16-bit vector lane holds (the CPU kernel sums its lanes before they overflow).
    x = torch.zeros((1, 2, 1_100_003), dtype=torch.bfloat16)
    x[0, 1, ::3] = 1.0
    with pozfast.use_backend(backend):
        counts = pozfast.near_zero_counts(x, (0.0, 0.5), 1)
    zeros = 1_100_003 - 366_668
    assert counts.tolist() == [[1_100_003, zeros], [1_100_003, zeros]]


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_special_values(backend, dtype):
    info = torch.finfo(dtype)
    tau = 0.5
    above = tau + info.eps / 2  # the next value of the dtype above tau
    values = [float("nan"), -float("nan"), float("inf"), -float("inf"), -0.0, 0.0, tau, -tau, above,
              info.tiny / 2, -info.max]
    x = torch.tensor(values, dtype=dtype).reshape(-1, 1)
    with pozfast.use_backend(backend):
        counts = pozfast.near_zero_counts(x, (0.0, tau, 1e10), 1)
        y, relu_counts = pozfast.relu_near_zero_counts(x, (0.0, tau), 1)
    # NaN never counts, -0.0 counts at 0, +-tau at tau; 1e10 rounds to inf in float16, where +-inf and -max
    # count too.
    assert counts[:, 0].tolist() == [2, 5, 9 if dtype == torch.float16 else 6]
    assert torch.equal(counts, near_zero_reference(x, (0.0, tau, 1e10), 1))
    # relu turns -inf, -tau and -max into +0.0.
    assert relu_counts[:, 0].tolist() == [5, 7]
    assert_bitwise_equal(y, torch.relu(x))


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("shape,cd", [((0, 5), 1), ((3, 0), 1), ((2, 3, 0, 4), 1), ((0, 4, 3), -1)])
def test_empty_adds_nothing(backend, shape, cd):
    a = torch.empty(shape)
    counts = torch.full((2, shape[cd]), 7, dtype=torch.int64)
    mask = torch.ones(shape[:1], dtype=torch.bool)
    with pozfast.use_backend(backend):
        near_zero_count_(counts, a, (0.0, 1.0), cd, mask)
        y = relu_near_zero_count(a, counts, (0.0, 1.0), cd, mask)
        relu_near_zero_count(a.clone(), counts, (0.0, 1.0), cd, mask, inplace=True)
    assert y.shape == a.shape and (counts == 7).all()


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_counts_accumulate_past_2_31(backend):
    a = special_values((6, 5, 70), torch.float32, 3)
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.uint8)
    thresholds = (0.0, 0.3)
    once = near_zero_reference(a, thresholds, 1, mask)
    counts = torch.full((2, 5), 2**31 + 5, dtype=torch.int64)
    with pozfast.use_backend(backend):
        near_zero_count_(counts, a, thresholds, 1, mask)
        assert torch.equal(counts, once + 2**31 + 5)
        near_zero_count_(counts, a, thresholds, 1, mask)
        y = relu_near_zero_count(a, counts, thresholds, 1, mask)
    assert torch.equal(counts, 2 * once + near_zero_reference(torch.relu(a), thresholds, 1, mask) + 2**31 + 5)
    assert_bitwise_equal(y, torch.relu(a))  # NaN included


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_non_contiguous_counts_and_mask(backend):
    a = special_values((6, 4, 3), torch.float64, 5)
    mask = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [1, 1]], dtype=torch.bool)[:, 0]  # strided view
    store = torch.zeros((3, 8), dtype=torch.int64)
    counts = store[:, ::2]  # not contiguous
    with pozfast.use_backend(backend):
        near_zero_count_(counts, a, (0.0, 0.5, 1.0), 1, mask)
    assert torch.equal(counts, near_zero_reference(a, (0.0, 0.5, 1.0), 1, mask))
    assert (store[:, 1::2] == 0).all()


def test_dense_layouts_and_masks_read_in_place():
    x = torch.randn(2, 3, 4, 5)
    assert _layout(x, 1, None) == ((2, 3, 20), 1)
    assert _layout(x, 1, torch.ones(2)) == ((2, 3, 20), 1)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert _layout(cl, 1, None) == ((40, 3, 1), 1)
    assert _layout(cl, 1, torch.ones(2)) == ((40, 3, 1), 20)  # 20 outer rows per image
    tokens = torch.randn(2, 9, 33)
    assert _layout(tokens, 2, torch.ones(2, 9)) == ((18, 33, 1), 1)
    assert _layout(tokens, 2, torch.ones(2)) == ((18, 33, 1), 9)
    assert _layout(tokens.view(18, 33), 1, torch.ones(18)) == ((18, 33, 1), 1)
    assert _layout(torch.randn(2, 9, 1), 2, torch.ones(2, 9)) == ((18, 1, 1), 1)  # one channel
    swapped = torch.randn(9, 2, 33).transpose(0, 1)  # dense, but the (2, 9) mask is not outermost
    assert _layout(swapped, 2, None) == ((18, 33, 1), 1)
    assert _layout(swapped, 2, torch.ones(2, 9)) is None
    assert _layout(x[..., ::2], 1, None) is None


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_backward_matches_torch_relu(backend, dtype):
    x = special_values((4, 6, 5), dtype, 3)
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=dtype))
    grad = torch.randn(x.shape, dtype=dtype)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    with pozfast.use_backend(backend):
        y, counts = pozfast.relu_near_zero_counts(a, (0.0, 0.1), 1, mask=torch.tensor([1, 0, 1, 1]))
        assert not counts.requires_grad
        y.backward(grad)
    torch.relu(b).backward(grad)
    assert_bitwise_equal(a.grad, b.grad)
    assert torch.equal(counts, near_zero_reference(torch.relu(x), (0.0, 0.1), 1, torch.tensor([1, 0, 1, 1])))


def test_backward_through_inplace_and_accumulating_call():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    counts = torch.zeros((1, 4), dtype=torch.int64)
    h = x * 3
    y = relu_near_zero_count(h, counts, (0.0,), 1, inplace=True)
    assert y is h
    y.sum().backward()
    assert torch.equal(x.grad, 3 * (x.detach() > 0).double())
    assert torch.equal(counts, near_zero_reference(torch.relu(x.detach()), (0.0,), 1))
    with pytest.raises(RuntimeError, match="leaf Variable"):
        pozfast.relu_near_zero_counts(torch.randn(3, 4, requires_grad=True), inplace=True)


def test_gradcheck():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    x = (x + 0.1 * torch.sign(x)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: pozfast.relu_near_zero_counts(t, (0.0, 0.2), 1)[0], (x,))


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("x, mask", [
    (torch.randn(3, 4), None),
    (torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last), torch.tensor([True, False])),
    (torch.randn(2, 5, 3)[..., ::2], torch.tensor([[1, 0, 1, 1, 0], [0, 1, 1, 1, 1]])),
], ids=["2d", "channels_last-mask", "strided-token-mask"])
def test_opcheck(backend, x, mask):
    cd = 1 if x.dim() != 3 else -1
    counts = torch.zeros((2, x.shape[cd]), dtype=torch.int64)
    thresholds = [0.0, 0.5]
    with pozfast.use_backend(backend):
        torch.library.opcheck(torch.ops.pozfast.near_zero_count_.default, (counts, x, thresholds, cd, mask))
        torch.library.opcheck(torch.ops.pozfast.relu_near_zero_count.default, (x, counts, thresholds, cd, mask))
        torch.library.opcheck(torch.ops.pozfast.relu_near_zero_count_.default,
                              (x.clone(), counts, thresholds, cd, mask))


def test_torch_compile_fullgraph_matches_eager():
    """Counts of a compiled (CPU inductor) function, with a counter accumulating across calls as a tracker's."""
    totals = torch.zeros((2, 6), dtype=torch.int64)

    def forward(a, mask):
        h = torch.nn.functional.gelu(a)
        near_zero_count_(totals, h, (0.0, 0.1), -1, mask)
        y, relu_counts = pozfast.relu_near_zero_counts(a * 2, (0.0,), -1, mask=mask)
        return y, pozfast.near_zero_counts(h, (0.05,), -1, mask=mask), relu_counts

    compiled = torch.compile(forward, fullgraph=True)
    a = special_values((3, 5, 6), torch.float32, 7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    eager = forward(a, mask)
    eager_totals = totals.clone()
    totals.zero_()
    for _ in range(2):
        got = compiled(a, mask)
    for g, e in zip(got, eager):
        assert_bitwise_equal(g, e)
    assert torch.equal(totals, 2 * eager_totals)
    assert torch.equal(eager_totals, near_zero_reference(torch.nn.functional.gelu(a), (0.0, 0.1), -1, mask))


def test_torch_compile_with_autograd_matches_eager():
    """A compiled training step through the fused op: same gradients and counts as eager."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 6)
    counts = torch.zeros((2, 6), dtype=torch.int64)

    def loss(x, mask):
        return relu_near_zero_count(lin(x), counts, (0.0, 0.1), -1, mask).square().sum()

    x = torch.randn(3, 4, 6)
    mask = torch.rand(3, 4) < 0.7
    loss(x, mask).backward()
    eager_grad, eager_counts = lin.weight.grad.clone(), counts.clone()
    lin.weight.grad = None
    counts.zero_()
    torch.compile(loss, fullgraph=True)(x, mask).backward()
    torch.testing.assert_close(lin.weight.grad, eager_grad)
    assert torch.equal(counts, eager_counts)
    with torch.no_grad():
        assert torch.equal(eager_counts, near_zero_reference(torch.relu(lin(x)), (0.0, 0.1), -1, mask))


def _bad_thresholds():
    return [((), ValueError, "1 to 32"), (tuple(range(33)), ValueError, "1 to 32"),
            ((0.1, -0.5), ValueError, ">= 0"), ((float("nan"),), ValueError, "finite"),
            ((float("inf"),), ValueError, "finite"), ((0.5, 0.1), ValueError, "strictly increasing"),
            ((0.1, 0.1), ValueError, "strictly increasing"), ("0.1", TypeError, "sequence of numbers"),
            ((True,), TypeError, "numbers"), (0.1, TypeError, "sequence of numbers")]


@pytest.mark.parametrize("thresholds, error, match", _bad_thresholds())
def test_bad_thresholds(thresholds, error, match):
    a = torch.randn(3, 4)
    with pytest.raises(error, match=match):
        pozfast.near_zero_counts(a, thresholds)
    with pytest.raises(error, match=match):
        pozfast.relu_near_zero_counts(a, thresholds)


@pytest.mark.parametrize("call, error, match", [
    (lambda: pozfast.near_zero_counts(torch.ones(3, 4, dtype=torch.int32)), TypeError, "a must be a float32"),
    (lambda: pozfast.relu_near_zero_counts(torch.ones(3, 4, dtype=torch.bool)), TypeError, "x must be a float32"),
    (lambda: pozfast.near_zero_counts(torch.ones(5)), ValueError, "at least 2 dims"),
    (lambda: pozfast.near_zero_counts([1.0, 2.0]), TypeError, "torch.Tensor"),
    (lambda: pozfast.near_zero_counts(torch.ones(3, 4), channel_dim=2), ValueError, "channel_dim"),
    (lambda: pozfast.near_zero_counts(torch.ones(3, 4), channel_dim=1.0), TypeError, "channel_dim"),
    (lambda: pozfast.near_zero_counts(torch.ones(2, 9, 4), channel_dim=-1, mask=torch.ones(9, dtype=torch.bool)),
     ValueError, r"mask of shape \(9,\) matches no leading dims of a of shape \(2, 9, 4\)"),
    (lambda: pozfast.near_zero_counts(torch.ones(2, 9, 4), channel_dim=1, mask=torch.ones(2, 9, dtype=torch.bool)),
     ValueError, "before its channel dim"),
    (lambda: pozfast.near_zero_counts(torch.ones(2, 9, 4), mask=torch.ones(2, 9, 4, dtype=torch.bool)),
     ValueError, "matches no leading dims"),
    (lambda: pozfast.near_zero_counts(torch.ones(2, 4), mask=torch.ones(2)), TypeError, "bool or integer"),
    (lambda: pozfast.near_zero_counts(torch.ones(2, 4), mask=[1, 0]), TypeError, "mask must be None or a"),
    (lambda: pozfast.relu_near_zero_counts(torch.ones(2, 4), mask=torch.ones(3, dtype=torch.bool)), ValueError,
     "matches no leading dims of x"),
    (lambda: torch.ops.pozfast.near_zero_count_(torch.zeros(2, 4, dtype=torch.int64), torch.ones(3, 4), [0.0], 1),
     ValueError, r"counts must be an int64 tensor of shape \(1, 4\)"),
    (lambda: torch.ops.pozfast.near_zero_count_(torch.zeros(1, 4), torch.ones(3, 4), [0.0], 1),
     ValueError, "counts must be an int64"),
    (lambda: torch.ops.pozfast.relu_near_zero_count(torch.ones(3, 4), torch.zeros(1, 4, dtype=torch.int64),
                                                    [0.2, 0.1], 1), ValueError, "strictly increasing"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_forcing_an_unavailable_backend():
    with pozfast.use_backend("cuda-native"), pytest.raises(RuntimeError, match="cuda-native"):
        pozfast.near_zero_counts(torch.randn(3, 4))


def test_thresholds_zero_match_relu_count():
    x = special_values((4, 6, 7, 7), torch.float32, 9)
    y, counts = pozfast.relu_near_zero_counts(x)
    y_ref, zeros = pozfast.relu_count(x)
    assert_bitwise_equal(y, y_ref)
    assert torch.equal(counts[0], zeros)


def test_benchmark_runs_quickly():
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "benchmarks/near_zero.py", "--quick", "--reps", "1"], cwd=root,
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "pozfast.near_zero_counts" in res.stdout and "relu_count inplace" in res.stdout


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@cuda
@pytest.mark.parametrize("backend", available_backends("cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES + LARGE_CASES, ids=id_case)
def test_cuda_matches_reference(backend, dtype, case):
    x, cd, thresholds, mask = case_data(case, dtype, seed=(CASES + LARGE_CASES).index(case))
    # The mask stays on the CPU for odd cases: the op moves it.
    mask = mask.cuda() if mask is not None and x.numel() % 2 else mask
    check_all_modes(backend, x.cuda(), cd, thresholds, mask)


@cuda
@pytest.mark.parametrize("backend", available_backends("cuda"))
def test_cuda_graph_capture_and_compile(backend):
    x = special_values((64, 48), torch.float32, 3, device="cuda")
    cl = special_values((4, 16, 9, 9), torch.bfloat16, 4, device="cuda").contiguous(memory_format=torch.channels_last)
    mask = (torch.arange(64, device="cuda") % 3 != 0)
    counts = torch.zeros((2, 48), dtype=torch.int64, device="cuda")
    cl_counts = torch.zeros((3, 16), dtype=torch.int64, device="cuda")
    with pozfast.use_backend(backend):
        def step():
            near_zero_count_(counts, x, (0.0, 0.1), 1, mask)
            return relu_near_zero_count(cl, cl_counts, (0.0, 0.5, 1.0), 1, mask[:4])

        step()  # warm-up outside the capture (Triton compiles and tunes)
        counts.zero_()
        cl_counts.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = step()
        graph.replay()
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(counts, 2 * near_zero_reference(x, (0.0, 0.1), 1, mask))
        assert torch.equal(cl_counts, 2 * near_zero_reference(torch.relu(cl), (0.0, 0.5, 1.0), 1, mask[:4]))
        assert_bitwise_equal(y, torch.relu(cl))
        compiled = torch.compile(lambda t, m: pozfast.near_zero_counts(t, (0.0, 0.1), 1, mask=m), fullgraph=True)
        assert torch.equal(compiled(x, mask), near_zero_reference(x, (0.0, 0.1), 1, mask))
