"""pozfast.relu_count against the plain-torch reference, on every available backend."""

import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pozfast
from pozfast.ops.relu_count import memory_split
from tests.conftest import DTYPES, assert_bitwise_equal, available_backends, bits, special_values
from tests.reference import relu_count_reference

# (shape, channel_dim, layout): layout is "contiguous", "channels_last", "channels_last_3d",
# "transposed" (a permuted, non-contiguous view) or "strided" (every other element: not dense).
CASES = [
    ((1, 1), 1, "contiguous"),
    ((7, 3), 1, "contiguous"),
    ((1023, 7), 1, "contiguous"),
    ((2, 3000), 1, "contiguous"),
    ((3, 1, 1023), 1, "contiguous"),
    ((2, 5, 7), 1, "contiguous"),
    ((3, 7, 130), 1, "contiguous"),          # long rows: row mode
    ((2, 3, 5, 7), 1, "contiguous"),
    ((2, 3, 5, 7), 1, "channels_last"),
    ((4, 3000, 2, 3), 1, "channels_last"),
    ((2, 3, 2, 5, 7), 1, "contiguous"),
    ((2, 3, 2, 5, 7), 1, "channels_last_3d"),
    ((2, 9, 33), -1, "contiguous"),           # (N, L, C) token activations
    ((3, 17, 1), -1, "contiguous"),
    ((5, 7), 0, "contiguous"),
    ((4, 6, 5), 1, "transposed"),
    ((4, 6, 10), 1, "strided"),
    ((2, 6, 4, 10), 1, "strided"),
    ((1, 1, 1, 1), 1, "channels_last"),
    ((3, 5, 67), 1, "offset"),               # not 16-byte aligned: the scalar paths
    ((6, 41), 1, "offset"),
]
# Shapes of large models, for the CUDA kernels' wide-channel and many-row paths.
WIDE_CASES = [
    ((3, 100, 20000), -1, "contiguous"),     # an LLM FFN activation (N, L, C), C above 12288
    ((2, 20000, 3, 3), 1, "channels_last"),
    ((257, 13000), 1, "offset"),
    ((2, 20000, 70), 1, "contiguous"),
]


def make(shape, dtype, layout, seed):
    if layout == "transposed":
        return special_values(shape[::-1], dtype, seed).permute(*reversed(range(len(shape))))
    if layout == "strided":
        return special_values(shape, dtype, seed)[..., ::2]
    if layout == "offset":  # a dense view one element into its storage
        n = int(np.prod(shape))
        return special_values((n + 1,), dtype, seed)[1:].view(shape)
    x = special_values(shape, dtype, seed)
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
           "channels_last_3d": torch.channels_last_3d}[layout]
    return x.contiguous(memory_format=fmt)


def id_case(case):
    shape, cd, layout = case
    return f"{'x'.join(map(str, shape))}-cd{cd}-{layout}"


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=id_case)
@pytest.mark.parametrize("mode", ["new", "out", "inplace"])
def test_matches_reference(backend, dtype, case, mode):
    shape, cd, layout = case
    x = make(shape, dtype, layout, seed=CASES.index(case))
    y_ref, zeros_ref = relu_count_reference(x, cd)
    with pozfast.use_backend(backend):
        if mode == "new":
            y, zeros = pozfast.relu_count(x, cd)
        elif mode == "out":
            out = torch.empty_like(x)
            y, zeros = pozfast.relu_count(x, cd, out=out)
            assert y is out
        else:
            work = x.clone()
            y, zeros = pozfast.relu_count(work, cd, inplace=True)
            assert y is work
    assert_bitwise_equal(y, y_ref)
    assert zeros.dtype == torch.int64 and zeros.device == x.device
    assert torch.equal(zeros, zeros_ref)


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("shape,cd", [((0, 5), 1), ((3, 0), 1), ((2, 3, 0, 4), 1), ((0, 4, 3), -1)])
def test_empty(backend, shape, cd):
    x = torch.empty(shape)
    with pozfast.use_backend(backend):
        y, zeros = pozfast.relu_count(x, cd)
        assert y.shape == x.shape
        assert torch.equal(zeros, torch.zeros(shape[cd], dtype=torch.int64))
        assert torch.equal(pozfast.relu_count(x.clone(), cd, inplace=True)[1], zeros)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_payload_and_negative_zero_pass_through(dtype):
    x = special_values((3, 5, 40), dtype, 5)
    y, zeros = pozfast.relu_count(x, 1)
    keep = torch.isnan(x) | (x == 0) | (x > 0)
    assert torch.equal(bits(y)[keep], bits(x)[keep])  # NaN payloads, -0.0 and positives unchanged
    assert (bits(y)[~keep] == 0).all()                  # negatives and -inf become +0.0
    assert torch.equal(zeros, ((x == 0) | (x < 0)).sum((0, 2)))


def test_counts_past_float_precision():
    # 2^24 + 3 zeros in one channel: a float32 running count would round; int64 counts must not.
    x = torch.zeros((2**12 + 1, 2, 2**12), dtype=torch.bfloat16)
    x[:, 1].fill_(1.0)
    x[-1, 0, :3] = 2.0
    n = (2**12 + 1) * 2**12 - 3
    _, zeros = pozfast.relu_count(x, 1, inplace=True)
    assert zeros.tolist() == [n, 0]
    _, zeros = pozfast.relu_count(x.view(2**12 + 1, 2 * 2**12), 1)
    assert zeros.sum().item() == n


@pytest.mark.parametrize("backend", available_backends("cpu"))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_shapes_and_layouts(backend, data):
    ndim = data.draw(st.integers(2, 5))
    shape = tuple(data.draw(st.lists(st.integers(1, 9), min_size=ndim, max_size=ndim)))
    cd = data.draw(st.integers(-ndim, ndim - 1))
    perm = data.draw(st.permutations(range(ndim)))
    dtype = data.draw(st.sampled_from(DTYPES))
    seed = data.draw(st.integers(0, 2**16))
    # A tensor whose memory order is `perm`: any dense layout, natively handled.
    base = special_values(tuple(shape[p] for p in perm), dtype, seed)
    x = base.permute(*[perm.index(d) for d in range(ndim)])
    assert x.shape == shape
    with pozfast.use_backend(backend):
        y, zeros = pozfast.relu_count(x, cd)
    y_ref, zeros_ref = relu_count_reference(x, cd)
    assert_bitwise_equal(y, y_ref)
    assert torch.equal(zeros, zeros_ref)


def test_dense_layouts_run_without_copy():
    x = torch.randn(2, 3, 4, 5)
    assert memory_split(x, 1) == (2, 3, 20)
    assert memory_split(x.contiguous(memory_format=torch.channels_last), 1) == (40, 3, 1)
    assert memory_split(torch.randn(2, 7, 9), 2) == (14, 9, 1)
    assert memory_split(x[..., ::2], 1) is None
    cl = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    ptr = cl.data_ptr()
    y, _ = pozfast.relu_count(cl, 1, inplace=True)
    assert y.data_ptr() == ptr and y.is_contiguous(memory_format=torch.channels_last)
    assert pozfast.relu_count(cl, 1)[0].stride() == cl.stride()


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_backward_matches_torch_relu(backend, dtype):
    x = special_values((4, 6, 5), dtype, 3)
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=dtype))  # finite grads to compare
    grad = torch.randn(x.shape, dtype=dtype)
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    with pozfast.use_backend(backend):
        y, zeros = pozfast.relu_count(a, 1)
        assert not zeros.requires_grad
        y.backward(grad)
    torch.relu(b).backward(grad)
    assert_bitwise_equal(a.grad, b.grad)


def test_backward_through_inplace():
    x = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    h = x * 3
    y, _ = pozfast.relu_count(h, 1, inplace=True)
    y.sum().backward()
    assert torch.equal(x.grad, 3 * (x.detach() > 0).double())


def test_inplace_on_leaf_requiring_grad_is_refused_like_torch():
    with pytest.raises(RuntimeError, match="leaf Variable"):
        pozfast.relu_count(torch.randn(3, 4, requires_grad=True), inplace=True)
    with pytest.raises(RuntimeError, match="out="):
        pozfast.relu_count(torch.randn(3, 4, requires_grad=True), out=torch.empty(3, 4))
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="out is a leaf Variable that requires grad"):
        pozfast.relu_count(x, out=torch.empty(3, 4, requires_grad=True))
    with pytest.raises(RuntimeError, match="out is a tensor that requires grad"):
        pozfast.relu_count(x, out=torch.empty(3, 4, requires_grad=True) * 1)
    with pytest.raises(RuntimeError):  # torch refuses the same
        torch.clamp_min(x, 0, out=torch.empty(3, 4, requires_grad=True))
    with torch.no_grad():  # without autograd, torch allows both, and so does relu_count
        out = torch.empty(3, 4, requires_grad=True)
        assert pozfast.relu_count(x, out=out)[0] is out and torch.equal(out, torch.relu(x))
        leaf = torch.randn(3, 4, requires_grad=True)
        want = torch.relu(leaf)
        assert torch.equal(pozfast.relu_count(leaf, inplace=True)[0], want)


def _overlapping_views():
    flat = torch.randn(13)
    grid = torch.randn(4, 7)
    square = torch.randn(4, 4)
    return {"dense": (flat[:12].view(3, 4), flat[1:].view(3, 4)),  # both dense: the native kernel's case
            "strided": (grid[:, :-1], grid[:, 1:]),
            "transposed": (square, square.T)}


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("kind", ["dense", "strided", "transposed"])
def test_out_overlapping_x_is_refused(backend, kind):
    x, out = _overlapping_views()[kind]
    before = x.clone()
    with pozfast.use_backend(backend):
        with pytest.raises(RuntimeError, match="out overlaps x"):
            pozfast.relu_count(x, out=out)
        with pytest.raises(RuntimeError, match="out overlaps x"):  # the registered op checks too
            torch.ops.pozfast.relu_count_out(x, 1, out)
    assert torch.equal(x, before)


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_out_sharing_storage_without_overlap_or_being_x(backend):
    flat = torch.randn(24)
    x, out = flat[:12].view(3, 4), flat[12:].view(3, 4)
    want, zeros_want = relu_count_reference(x, 1)
    with pozfast.use_backend(backend):
        y, zeros = pozfast.relu_count(x, out=out)
        assert y is out and torch.equal(y, want) and torch.equal(zeros, zeros_want)
        strided = torch.randn(3, 8)[:, ::2]
        want, zeros_want = relu_count_reference(strided, 1)
        y, zeros = pozfast.relu_count(strided, out=strided)  # out is x: the same as inplace=True
        assert y is strided and torch.equal(y, want) and torch.equal(zeros, zeros_want)


def test_numpy_integer_channel_dim():
    x = torch.randn(2, 5, 3)
    assert torch.equal(pozfast.relu_count(x, np.int64(-1))[1], pozfast.relu_count(x, -1)[1])


def test_gradcheck():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    x = (x + 0.1 * torch.sign(x)).requires_grad_()  # keep away from the kink at 0
    assert torch.autograd.gradcheck(lambda t: pozfast.relu_count(t, 1)[0], (x,))


@pytest.mark.parametrize("backend", available_backends("cpu"))
@pytest.mark.parametrize("x", [torch.randn(3, 4), torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
                               torch.randn(2, 5, 3)[..., ::2]], ids=["2d", "channels_last", "strided"])
def test_opcheck(backend, x):
    with pozfast.use_backend(backend):
        torch.library.opcheck(torch.ops.pozfast.relu_count.default, (x, 1))
        torch.library.opcheck(torch.ops.pozfast.relu_count_.default, (x.clone(), 1))
        torch.library.opcheck(torch.ops.pozfast.relu_count_out.default, (x, 1, torch.empty_like(x)))


def test_torch_compile_fullgraph():
    def per_channel_apoz(x):
        y, zeros = pozfast.relu_count(x, 1)
        return y * 2, zeros.double() / (x.numel() // x.shape[1])

    compiled = torch.compile(per_channel_apoz, fullgraph=True)
    x = special_values((4, 3, 5, 5), torch.float32, 11)
    y, apoz = compiled(x)
    y_ref, zeros_ref = relu_count_reference(x, 1)
    assert_bitwise_equal(y, y_ref * 2)
    assert torch.equal(apoz, zeros_ref.double() / 100)


@pytest.mark.parametrize("call, error, match", [
    (lambda: pozfast.relu_count(torch.ones(3, 4, dtype=torch.int32)), TypeError, "x must be a float32"),
    (lambda: pozfast.relu_count(torch.ones(3, 4, dtype=torch.bool)), TypeError, "x must be a float32"),
    (lambda: pozfast.relu_count(torch.ones(3, 4), 2), ValueError, "channel_dim"),
    (lambda: pozfast.relu_count(torch.ones(3, 4), -3), ValueError, "channel_dim"),
    (lambda: pozfast.relu_count(torch.tensor(1.0)), ValueError, "at least 2 dims"),
    (lambda: pozfast.relu_count(torch.ones(5)), ValueError, "at least 2 dims"),
    (lambda: pozfast.relu_count([1.0, 2.0]), TypeError, "torch.Tensor"),
    (lambda: pozfast.relu_count(torch.ones(3, 4), out=torch.empty(4, 3)), ValueError, "out must match"),
    (lambda: pozfast.relu_count(torch.ones(3, 4), inplace=True, out=torch.empty(3, 4)), ValueError, "either"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_forcing_a_backend():
    x = torch.randn(3, 4)
    with pozfast.use_backend("cuda-native"), pytest.raises(RuntimeError, match="cuda-native"):
        pozfast.relu_count(x)
    with pytest.raises(ValueError, match="backend must be one of"):
        with pozfast.use_backend("gpu"):
            pass


def test_backends_report():
    status = pozfast.backends()
    assert list(status) == ["cpu-native", "cuda-native", "triton", "torch"]
    assert status["torch"].available
    assert all(s.reason for s in status.values())


def test_the_cuda_sign_rule_is_probed_from_torch():
    from pozfast.ops.relu_count import cuda_relu_clears

    # The probe asks torch's relu on the device; the CPU's keeps -0.0, as some torch versions' CUDA relu does.
    assert not any(cuda_relu_clears(torch.device("cpu"), dtype) for dtype in DTYPES)
    if torch.cuda.is_available():
        clears = cuda_relu_clears(torch.device("cuda", 0), torch.float32)
        assert clears == (bits(torch.relu(torch.tensor([-0.0], device="cuda")))[0].item() == 0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" or not pozfast.backends()["triton"].available,
                    reason="needs Triton interpreted on CPU tensors (TRITON_INTERPRET=1)")
@pytest.mark.parametrize("clear", [False, True], ids=["keep", "clear"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", [((3, 7, 130), 1, "contiguous"), ((4, 30, 2, 3), 1, "channels_last")], ids=id_case)
def test_triton_kernels_give_either_sign_rule_of_torch_cuda_relu(clear, dtype, case):
    # torch's CUDA relu makes -0.0 +0.0 in some versions and keeps it in others; the kernels take the rule as
    # CLEAR, run here on CPU tensors by the interpreter.
    from pozfast.ops.near_zero import threshold_keys
    from pozfast.triton_kernels.near_zero import near_zero_count
    from pozfast.triton_kernels.relu_count import relu_count

    shape, cd, layout = case
    x = make(shape, dtype, layout, seed=3)
    want = torch.relu(x)
    if clear:
        want = torch.where(want == 0, torch.zeros((), dtype=dtype), want)  # +0.0 for -0.0
    want_zeros = (want == 0).sum([d for d in range(x.dim()) if d != cd], dtype=torch.int64)
    split = memory_split(x, cd)
    y, zeros = torch.empty_like(x), torch.zeros(shape[cd], dtype=torch.int64)
    relu_count(x, y, zeros, *split, clear=clear)
    assert_bitwise_equal(y, want)
    assert torch.equal(zeros, want_zeros)
    y, counts = torch.empty_like(x), torch.zeros(1, shape[cd], dtype=torch.int64)
    near_zero_count(x, y, counts, threshold_keys((0.0,), dtype), *split, None, 1, clear=clear)
    assert_bitwise_equal(y, want)
    assert torch.equal(counts[0], want_zeros)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: the build has no CUDA sources to check")
def test_cuda_sources_were_compiled():
    from pozfast._native import native

    assert native() is not None, pozfast.backends()["cpu-native"].reason
    assert native().with_cuda
    reason = pozfast.backends()["cuda-native"].reason
    assert "compiled for sm_75, sm_80, sm_86, sm_89, sm_90" in reason, reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("backend", available_backends("cuda"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES + WIDE_CASES, ids=id_case)
@pytest.mark.parametrize("mode", ["new", "inplace"])
def test_cuda_matches_reference(backend, dtype, case, mode):
    shape, cd, layout = case
    x = make(shape, dtype, layout, seed=7).cuda()
    y_ref, zeros_ref = relu_count_reference(x, cd)
    with pozfast.use_backend(backend):
        if mode == "new":
            y, zeros = pozfast.relu_count(x, cd)
        else:
            y, zeros = pozfast.relu_count(x.clone(), cd, inplace=True)
    assert_bitwise_equal(y, y_ref)
    assert zeros.device == x.device and torch.equal(zeros, zeros_ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("backend", available_backends("cuda"))
@pytest.mark.parametrize("shape", [(1, 1, 2 ** 26 + 5), (2 ** 21 + 3, 40)], ids=["long-row", "many-rows"])
def test_cuda_grid_limits(backend, shape):
    # Grids past 65,535 blocks on axis 1 if launched naively: 2^16 chunks of one row, or 2^16 row blocks.
    x = torch.randn(shape, device="cuda", dtype=torch.float16)
    y_ref, zeros_ref = relu_count_reference(x, 1)
    with pozfast.use_backend(backend):
        y, zeros = pozfast.relu_count(x, 1)
    assert torch.equal(bits(y), bits(y_ref)) and torch.equal(zeros, zeros_ref)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("backend", available_backends("cuda"))
def test_cuda_second_device(backend):
    x = special_values((4, 33, 70), torch.float32, 5, device="cuda:1")
    y_ref, zeros_ref = relu_count_reference(x, 1)
    with torch.cuda.device(0), pozfast.use_backend(backend):
        y, zeros = pozfast.relu_count(x, 1)
    assert zeros.device == x.device
    assert_bitwise_equal(y, y_ref)
    assert torch.equal(zeros, zeros_ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("backend", available_backends("cuda"))
def test_cuda_graph_capture_and_compile(backend):
    x = special_values((8, 16, 9, 9), torch.float32, 3, device="cuda")
    out = torch.empty_like(x)
    y_ref, zeros_ref = relu_count_reference(x, 1)
    with pozfast.use_backend(backend):
        pozfast.relu_count(x, 1, out=out)  # warm-up (Triton compiles/tunes outside the capture)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            _, zeros = pozfast.relu_count(x, 1, out=out)
        out.zero_()
        graph.replay()
        torch.cuda.synchronize()
        assert_bitwise_equal(out, y_ref)
        assert torch.equal(zeros, zeros_ref)
        compiled = torch.compile(lambda t: pozfast.relu_count(t, 1), fullgraph=True)
        y, z = compiled(x)
    assert_bitwise_equal(y, y_ref)
    assert torch.equal(z, zeros_ref)
