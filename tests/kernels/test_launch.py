"""What the Triton launchers do before a kernel runs, checked without a GPU.

* grids stay inside CUDA's limits at any size: checked on shapes computed on ``meta``
  tensors (nothing allocated), for sizes far past what fits in memory here;
* a compiled launch runs under a guard for its tensors' device (Triton launches on the
  current device, not the tensors'), with fake ``cuda:1`` tensors;
* the launchers refuse what the kernels would misread (strided tensors, wrong dtypes);
* the TF32 choice follows PyTorch's current precision API (in subprocesses: the
  setting is process-wide).
"""

import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

_launch = pytest.importorskip("impresslearn.kernels._launch")
from impresslearn.kernels import bank, combine, linear  # noqa: E402

MAX_X, MAX_Y, MAX_Z = _launch.MAX_GRID


def _meta(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="meta")


def _bank(k, n):
    return _meta((k + 7) // 8, n, dtype=torch.uint8)


def _launches(call):
    with _launch.recorded_launches() as launches:
        call()
    assert launches, "the launcher launched nothing"
    return launches


def _within_limits(launches):
    for launch in launches:
        grid = launch.grid + (1,) * (3 - len(launch.grid))
        assert grid[0] <= MAX_X and grid[1] <= MAX_Y and grid[2] <= MAX_Z, (launch.kernel, launch.grid)


# ----------------------------------------------------------------------------- grid limits

# 3 * 2**30 weights: cdiv(n, 1024) = 3.1M blocks, 48x the 65535 allowed on grid axis y
HUGE_N = 3 * 2**30


@pytest.mark.parametrize("k", (1, 9, 250))
def test_bank_grids_fit_cuda_limits_at_billions_of_weights(k):
    launches = _launches(lambda: bank.pack_masks(_meta(k, HUGE_N, dtype=torch.bool)))
    launches += _launches(lambda: bank.unpack_masks(_bank(k, HUGE_N), k))
    launches += _launches(lambda: bank.set_mask_(_bank(k, HUGE_N), k - 1, _meta(HUGE_N, dtype=torch.bool)))
    _within_limits(launches)
    for launch in launches:  # the blocks cover every weight
        assert launch.grid[0] * launch.kwargs["BLOCK_N"] >= HUGE_N


def test_set_mask_plane_offset_is_int64_past_2_gib():
    # plane 31 of a 250-mask bank of HUGE_N weights starts past 2**31 bytes: the host
    # passes the offset as a Python int, which Triton types i64 (not i32)
    (launch,) = _launches(lambda: bank.set_mask_(_bank(250, HUGE_N), 249, _meta(HUGE_N, dtype=torch.bool)))
    assert launch.args[2] == 31 * HUGE_N > 2**31


def test_combine_grids_fit_cuda_limits_at_billions_of_weights():
    n, k = HUGE_N, 250
    launches = _launches(lambda: combine.combine_masks(_meta(n), _bank(k, n), _meta(k)))
    launches += _launches(lambda: combine.combine_masks_alpha_grad(_meta(n), _meta(n), _bank(k, n), k))
    _within_limits(launches)


@pytest.mark.parametrize("m", (1, 64))
def test_fused_linear_grids_fit_cuda_limits_for_long_layers(m):
    # N = 8M outputs: cdiv(N, 64) = 131072 output tiles (2x axis y's limit); C = 4M
    # inputs: cdiv(C, 32) = 131072 column tiles for grad_x
    for n, c in ((8 * 2**20, 16), (16, 4 * 2**20)):
        k = 9
        x, w, b, a, g = _meta(m, c), _meta(n, c), _bank(k, n * c), _meta(k), _meta(m, n)
        launches = _launches(lambda: linear.linear_forward(x, w, b, a, split=4))
        launches += _launches(lambda: linear.linear_grad_input(g, w, b, a, split=4))
        launches += _launches(lambda: linear.linear_grad_params(g, x, w, b, a, True))
        _within_limits(launches)


def test_grid_past_the_limit_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="exceeds CUDA's limit on axis y"):
        _launch.check_grid(bank._pack_kernel, (4, MAX_Y + 1))
    with pytest.raises(ValueError, match="axis x"):
        _launch.check_grid(bank._pack_kernel, (MAX_X + 1,))


# ----------------------------------------------------------------------------- device guard


class _RecordingGuard:
    """Stands in for ``torch.cuda.device``: records which device a block runs under."""

    current = []

    def __init__(self, device):
        self.device = torch.device(device)

    def __enter__(self):
        _RecordingGuard.current.append(self.device)

    def __exit__(self, *exc):
        _RecordingGuard.current.pop()


def test_compiled_launch_runs_on_the_tensors_device(monkeypatch):
    ran_on = []

    class Wrapped:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: ran_on.append(list(_RecordingGuard.current))

    monkeypatch.setattr(_launch, "interpreted", lambda: False)  # take the compiled path
    monkeypatch.setattr(torch.cuda, "device", _RecordingGuard)
    monkeypatch.setattr(torch.library, "wrap_triton", Wrapped)
    with FakeTensorMode():
        weight = torch.empty(100, device="cuda:1")
        out = torch.empty(100, device="cuda:1")
    _launch.launch(combine._combine_fwd_kernel, (1,), weight, out, 100, BLOCK_N=128)
    assert ran_on == [[torch.device("cuda:1")]]


def test_launch_refuses_tensors_on_two_devices():
    with FakeTensorMode():
        on_gpu = torch.empty(4, device="cuda:1")
    with pytest.raises(ValueError, match="several devices"):
        _launch.launch(combine._combine_fwd_kernel, (1,), torch.empty(4), on_gpu)


# ----------------------------------------------------------------------------- layout checks


def test_launchers_refuse_what_the_kernels_would_misread():
    k, n = 9, 64
    weight, alpha = torch.randn(2 * n), torch.randn(k)
    bank_ = torch.zeros(2, n, dtype=torch.uint8)
    with pytest.raises(ValueError, match="weight must be contiguous"):
        combine.combine_masks(weight[::2], bank_, alpha)  # a strided view read as contiguous
    with pytest.raises(TypeError, match="alpha must have dtype float32"):
        combine.combine_masks(weight[:n], bank_, alpha.double())
    with pytest.raises(ValueError, match="disagree on K"):
        combine.combine_masks(weight[:n], bank_, alpha[:8])
    with pytest.raises(ValueError, match="bank covers"):
        combine.combine_masks_alpha_grad(weight[:n], weight[:n], bank_[:, :32].contiguous(), k)
    with pytest.raises(ValueError, match="masks must be contiguous"):
        bank.pack_masks(torch.zeros(n, 3, dtype=torch.bool).t())
    with pytest.raises(IndexError, match="out of range"):
        bank.set_mask_(bank_, 16, torch.zeros(n, dtype=torch.bool))

    x, w = torch.randn(4, 8), torch.randn(5, 8)
    b, a = torch.zeros(2, 40, dtype=torch.uint8), torch.randn(9)
    with pytest.raises(ValueError, match="x must be contiguous"):
        linear.linear_forward(torch.randn(8, 4).t(), w, b, a)
    with pytest.raises(TypeError, match="tensors must have one dtype: x float16, weight float32"):
        linear.linear_forward(x.half(), w, b, a)
    with pytest.raises(TypeError, match="tensors must have one dtype: grad float32, x float16"):
        linear.linear_grad_params(torch.randn(4, 5), x.half(), w, b, a, True)
    with pytest.raises(ValueError, match=r"grad has shape \(4, 6\), expected \[\*, 5\]"):
        linear.linear_grad_input(torch.randn(4, 6), w, b, a)
    with pytest.raises(ValueError, match=r"x has shape \(3, 8\), expected \[4, 8\]"):
        linear.linear_grad_params(torch.randn(4, 5), torch.randn(3, 8), w, b, a, True)


# ----------------------------------------------------------------------------- TF32


@pytest.mark.parametrize(
    "setting,expected",
    [
        ("", "ieee"),
        ("torch.backends.cuda.matmul.fp32_precision = 'tf32'", "tf32"),
        ("torch.backends.fp32_precision = 'tf32'; torch.backends.cuda.matmul.fp32_precision = 'ieee'", "ieee"),
        ("torch.backends.cuda.matmul.allow_tf32 = True", "tf32"),  # the legacy flag still counts
    ],
)
def test_tf32_follows_torch_precision_setting(setting, expected):
    # reading torch.backends.cuda.matmul.allow_tf32 raises once fp32_precision was set
    # to 'tf32' (torch >= 2.9): the launcher must read the current API only
    code = (
        "import torch\n"
        "from impresslearn.kernels.linear import _precision\n"
        f"{setting}\n"
        "print(_precision(torch.float32, torch.device('cuda')), _precision(torch.float16, torch.device('cuda')),"
        " _precision(torch.float32, torch.device('cpu')))\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [expected, "ieee", "ieee"]
