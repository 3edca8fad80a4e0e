"""The Triton kernels of multi-scale deformable attention equal the pure path; the backend switch
and its fallbacks.

There is no GPU in CI, so the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``),
which executes them on CPU tensors with numpy. Triton reads that variable when a kernel is
defined (before 3.4: when triton is imported), so the kernels run in a child process that
starts with it set: this file run as a script computes every case and scenario and writes the
results to a JSON file; the tests below assert on them. That keeps the interpreter out of this
process, whatever was imported before.

Each case compares the kernels' forward output and the gradients of the value, locations and
weights with :func:`ms_deform_attn_sample_pytorch` (``F.grid_sample``) on the same inputs, and
the float64 case also runs ``torch.autograd.gradcheck`` on the kernels (fast mode: finite
differences along random directions; the full Jacobian would take minutes in the interpreter).
Every first call of a size class autotunes the block size, running the kernels once per
candidate: the value gradient equals the pure path's only because the autotuner zeroes that
atomically accumulated buffer between the trials (``reset_to_zero``).
The sizes are tiny because the interpreter is slow (about 10 ms per program and sample point).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from sqr.layers import ms_deform_attn
from sqr.layers.ms_deform_attn import ms_deform_attn_sample, ms_deform_attn_sample_pytorch

ROOT = Path(__file__).resolve().parents[2]

# name -> batch, heads, channels per head, queries, points, level shapes (H, W), value dtype,
# how the locations are drawn. Channels 3 and 5 are not powers of two (the kernels mask the rest
# of the block); 70 queries are several blocks, the last partial, for every candidate block size.
CASES = {
    # Locations uniform in [-0.3, 1.3]: about a third of the samples have corners off the map.
    "float64_three_levels": (2, 2, 3, 5, 2, [(4, 5), (2, 3), (1, 1)], "float64", "uniform"),
    # Pixel centres, the map's borders (0 and 1), half a pixel and far outside, and +-1e6.
    "float64_exact_and_far_locations": (1, 2, 5, 6, 4, [(2, 3), (3, 1)], "float64", "special"),
    "float32_query_blocks": (1, 2, 4, 70, 2, [(3, 4), (2, 2)], "float32", "uniform"),
    # A half-precision value (as autocast projects it) with float32 locations and weights (as the
    # module computes them): loaded as it is, summed in float32.
    "float16_value": (1, 2, 4, 3, 2, [(3, 4), (2, 2)], "float16", "uniform"),
    "bfloat16_value": (1, 2, 4, 3, 2, [(3, 4), (2, 2)], "bfloat16", "uniform"),
}
# Largest difference allowed, relative to the largest magnitude of the pure path's tensor: the
# kernels sum the same terms in another order (bilinear corners, then points and levels). Both
# paths sum half-precision values in float32, so their float32 results agree to float32
# rounding (a float16 sum would be off by ~1e-3); the value gradient, rounded to the value's dtype
# at the end by both, may differ by one unit in its last place (2^-11 float16, 2^-8 bfloat16).
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5, "bfloat16": 1e-5}
GRAD_VALUE_TOLERANCE = {"float16": 2**-10, "bfloat16": 2**-7}
QUANTITIES = ("forward", "grad_value", "grad_locations", "grad_weights")
WARNING = "multi-scale deformable attention"


def make_inputs(
    batch: int,
    heads: int,
    channels: int,
    queries: int,
    points: int,
    shapes: list[tuple[int, int]],
    dtype: torch.dtype,
    kind: str,
    seed: int = 0,
) -> tuple[torch.Tensor, list[tuple[int, int]], torch.Tensor, torch.Tensor]:
    """Value [B, S, M, D] in ``dtype``, the shapes, locations [B, N, M, L, P, 2] and weights
    [B, N, M, L, P] (float64 for a float64 value, else float32)."""
    gen = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    pixels = sum(h * w for h, w in shapes)
    value = torch.randn(batch, pixels, heads, channels, generator=gen)
    size = (batch, queries, heads, levels, points)
    locations = torch.rand(*size, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3
    if kind == "special":
        # Per level: (x, y) values that land on pixel centres ((i + 0.5) / size), on the borders,
        # half a pixel outside, and far away; cycled over every sample.
        special = []
        for height, width in shapes:
            xs = [0.5 / width, 0.0, 1.0, -0.5 / width, 1.0 + 0.5 / width, 3.0, 1e6, -1e6]
            ys = [(height - 0.5) / height, 1.0, 0.0, 0.5 / height, -0.25, -2.0, -1e6, 1e6]
            special.append(torch.tensor([xs, ys], dtype=torch.float64).T)  # [8, 2]
        count = batch * queries * heads * points
        for level, table in enumerate(special):
            picks = table[torch.arange(count) % len(table)].view(batch, queries, heads, points, 2)
            locations[:, :, :, level] = picks
    weights = torch.rand(*size, generator=gen)
    sample_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return value.to(dtype), shapes, locations.to(sample_dtype), weights.to(sample_dtype)


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b| (the pure path's), 0 when both are all zero."""
    scale = b.abs().max().item()
    diff = (a.double() - b.double()).abs().max().item()
    return diff / scale if scale else diff


def forward_backward(sample, value, shapes, locations, weights) -> tuple[torch.Tensor, ...]:
    """``sample``'s output and the gradients of value, locations and weights."""
    leaves = [t.clone().requires_grad_() for t in (value, locations, weights)]
    out = sample(leaves[0], shapes, *leaves[1:])
    # A fixed, uneven output gradient, so that every channel and query counts differently.
    grad_out = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
    return (out.detach(), *torch.autograd.grad(out, leaves, grad_out))


def compare_case(name: str) -> dict:
    """Run one case through both paths (the caller has the interpreter on); the differences."""
    from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

    *sizes, dtype_name, kind = CASES[name]
    inputs = make_inputs(*sizes, getattr(torch, dtype_name), kind)
    results = {}
    outputs = {
        "pure": forward_backward(ms_deform_attn_sample_pytorch, *inputs),
        "triton": forward_backward(ms_deform_attn_sample_triton, *inputs),
    }
    for path, tensors in outputs.items():
        results[f"{path}_dtypes"] = [str(t.dtype) for t in tensors]
    for quantity, a, b in zip(QUANTITIES, outputs["triton"], outputs["pure"], strict=True):
        results[quantity] = max_relative_difference(a, b)
        results[f"{quantity}_nonzero"] = bool(b.abs().max() > 0)
    if dtype_name == "float64" and kind == "uniform":
        value, shapes, locations, weights = inputs

        def sample(*tensors: torch.Tensor) -> torch.Tensor:
            return ms_deform_attn_sample_triton(tensors[0], shapes, *tensors[1:])

        leaves = tuple(t.clone().requires_grad_() for t in (value, locations, weights))
        results["gradcheck"] = torch.autograd.gradcheck(
            sample, leaves, fast_mode=True, raise_exception=False
        )
    return results


def clear_backend_caches() -> None:
    """Forget the probes and warnings of earlier calls (each scenario starts afresh)."""
    ms_deform_attn._triton_launch_error.cache_clear()
    ms_deform_attn._warn_once.cache_clear()


def run_auto_twice(inputs: tuple) -> dict:
    """Two ``backend="auto"`` calls: the warnings they raise and whether the second one's output
    and gradients are exactly the pure path's."""
    clear_backend_caches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forward_backward(ms_deform_attn_sample, *inputs)
        auto = forward_backward(ms_deform_attn_sample, *inputs)
    pure = forward_backward(ms_deform_attn_sample_pytorch, *inputs)
    messages = [str(w.message) for w in caught if WARNING in str(w.message)]
    equal = all(torch.equal(a, b) for a, b in zip(auto, pure, strict=True))
    return {"warnings": messages, "equals_pure": equal}


def triton_error(inputs: tuple) -> str | None:
    """The error ``backend="triton"`` raises (None when it runs)."""
    clear_backend_caches()
    value, shapes, locations, weights = inputs
    try:
        ms_deform_attn_sample(value, shapes, locations, weights, backend="triton")
    except RuntimeError as e:
        return str(e)
    return None


def scenarios() -> dict:
    """The dispatch, torch.compile and fallback scenarios (the caller has the interpreter on)."""
    from sqr.layers import ms_deform_attn_triton as kernels

    inputs = make_inputs(1, 2, 4, 5, 2, [(3, 4), (2, 2)], torch.float32, "uniform")
    results = {}

    # Where the kernels run, "auto" and "triton" take them.
    calls = []
    direct = kernels.ms_deform_attn_sample_triton

    def counted(*args):
        calls.append(args)
        return direct(*args)

    kernels.ms_deform_attn_sample_triton = counted
    try:
        clear_backend_caches()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for backend in ("auto", "triton"):
                value, shapes, locations, weights = inputs
                ms_deform_attn_sample(value, shapes, locations, weights, backend=backend)
        results["dispatch"] = {
            "kernel_calls": len(calls),
            "warnings": [str(w.message) for w in caught if WARNING in str(w.message)],
        }
    finally:
        kernels.ms_deform_attn_sample_triton = direct

    # torch.compile traces the op as one node (fullgraph: a graph break would raise).
    compiled = torch.compile(direct, backend="aot_eager", fullgraph=True)
    eager = forward_backward(direct, *inputs)
    traced = forward_backward(compiled, *inputs)
    results["compile_max_difference"] = max(
        max_relative_difference(a, b) for a, b in zip(traced, eager, strict=True)
    )
    value, shapes, locations, weights = inputs
    levels = kernels._level_table(shapes, value.device)
    checks = torch.library.opcheck(
        kernels.ms_deform_attn_op,
        (value.requires_grad_(), levels, locations.requires_grad_(), weights.requires_grad_()),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    results["opcheck"] = {k: v for k, v in checks.items()}

    # A kernel that fails to compile: found by the probe before any real call uses the kernels.
    compiled_bwd = kernels._ms_deform_attn_bwd_kernel

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("forced compile failure")

    kernels._ms_deform_attn_bwd_kernel = Broken()
    try:
        results["compile_failure"] = run_auto_twice(inputs)
        results["compile_failure"]["triton_error"] = triton_error(inputs)
    finally:
        kernels._ms_deform_attn_bwd_kernel = compiled_bwd

    torch.use_deterministic_algorithms(True)
    try:
        results["deterministic"] = run_auto_twice(inputs)
        results["deterministic"]["triton_error"] = triton_error(inputs)
    finally:
        torch.use_deterministic_algorithms(False)
    return results


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case's differences and the scenarios' results, computed by this file run under
    Triton's interpreter."""
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton") / "differences.json"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_equal_the_pure_path(interpreted: dict[str, dict], name: str) -> None:
    result = interpreted["cases"][name]
    dtype = CASES[name][-2]
    for quantity in QUANTITIES:
        tolerance = TOLERANCE[dtype]
        if quantity == "grad_value":
            tolerance = GRAD_VALUE_TOLERANCE.get(dtype, tolerance)
        assert result[f"{quantity}_nonzero"], f"{quantity} is all zero: the case proves nothing"
        assert result[quantity] <= tolerance, (quantity, result[quantity])
    # Output and sample gradients in float32 (float64 kept); the value's gradient in its dtype.
    sample = "torch.float64" if dtype == "float64" else "torch.float32"
    expected = [sample, f"torch.{dtype}", sample, sample]
    assert result["triton_dtypes"] == result["pure_dtypes"] == expected


def test_gradcheck_in_float64(interpreted: dict[str, dict]) -> None:
    assert interpreted["cases"]["float64_three_levels"]["gradcheck"] is True


def test_auto_and_triton_take_the_kernels_where_they_run(interpreted: dict[str, dict]) -> None:
    dispatch = interpreted["scenarios"]["dispatch"]
    # The probe's call (once per size class, on the first use), then one per backend.
    assert dispatch == {"kernel_calls": 3, "warnings": []}


def test_torch_compile_traces_the_op(interpreted: dict[str, dict]) -> None:
    scenarios = interpreted["scenarios"]
    assert scenarios["compile_max_difference"] == 0.0
    assert set(scenarios["opcheck"].values()) == {"SUCCESS"}, scenarios["opcheck"]


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        (
            "compile_failure",
            "the Triton kernels failed on cpu (RuntimeError: forced compile failure)",
        ),
        ("deterministic", "deterministic algorithms are requested"),
    ],
)
def test_auto_falls_back_with_one_warning_and_triton_raises(
    interpreted: dict[str, dict], scenario: str, reason: str
) -> None:
    result = interpreted["scenarios"][scenario]
    # Two calls, one warning naming the reason; the PyTorch path's result, bit for bit.
    assert len(result["warnings"]) == 1, result["warnings"]
    assert reason in result["warnings"][0]
    assert result["equals_pure"] is True
    assert reason in result["triton_error"]
    assert "backend 'triton'" in result["triton_error"]


@pytest.fixture
def triton_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import sqr.layers.ms_deform_attn_triton`` raises ImportError, as without triton; the
    interpreter flag makes ``"auto"`` try the kernels on CPU tensors (none is reached)."""
    monkeypatch.setitem(sys.modules, "sqr.layers.ms_deform_attn_triton", None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    clear_backend_caches()
    yield
    clear_backend_caches()


def test_without_triton_auto_warns_once_and_takes_the_pytorch_path(triton_missing) -> None:
    inputs = make_inputs(1, 2, 3, 4, 2, [(3, 4), (2, 2)], torch.float32, "uniform")
    result = run_auto_twice(inputs)
    assert len(result["warnings"]) == 1, result["warnings"]
    assert "triton cannot be imported" in result["warnings"][0]
    assert result["equals_pure"] is True


def test_without_triton_the_triton_backend_raises(triton_missing) -> None:
    inputs = make_inputs(1, 2, 3, 4, 2, [(3, 4), (2, 2)], torch.float32, "uniform")
    assert "triton cannot be imported" in triton_error(inputs)


def test_auto_on_cpu_takes_the_pytorch_path_without_looking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def looked_up(*args):
        raise AssertionError("the Triton path was considered on CPU")

    monkeypatch.setattr(ms_deform_attn, "why_not_triton", looked_up)
    value, shapes, locations, weights = make_inputs(
        1, 2, 3, 4, 2, [(3, 4), (2, 2)], torch.float32, "uniform"
    )
    out = ms_deform_attn_sample(value, shapes, locations, weights)
    assert torch.equal(out, ms_deform_attn_sample_pytorch(value, shapes, locations, weights))


def test_shape_errors_are_named_before_any_kernel_runs() -> None:
    pytest.importorskip("triton")
    from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

    value, shapes, locations, weights = make_inputs(
        1, 2, 3, 4, 2, [(3, 4), (2, 2)], torch.float32, "uniform"
    )
    with pytest.raises(ValueError, match="2 levels for sampling locations on 3 levels"):
        ms_deform_attn_sample_triton(
            value, shapes, torch.cat([locations, locations[:, :, :, :1]], 3), weights
        )
    with pytest.raises(ValueError, match="do not match"):
        ms_deform_attn_sample_triton(value, shapes, locations, weights[..., :1])
    with pytest.raises(ValueError, match=r"B = 1, S = 16 .* and M = 2"):  # a value of 3 heads
        ms_deform_attn_sample_triton(value.repeat(1, 1, 2, 1)[:, :, :3], shapes, locations, weights)


if __name__ == "__main__":
    # The child of the ``interpreted`` fixture: argv[1] is where the results go.
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1: the kernels need Triton's interpreter")
    results = {"cases": {name: compare_case(name) for name in CASES}, "scenarios": scenarios()}
    Path(sys.argv[1]).write_text(json.dumps(results))
