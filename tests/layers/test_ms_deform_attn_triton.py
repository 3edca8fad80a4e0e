"""The Triton kernels of multi-scale deformable attention equal the pure path, and the dispatch.

There is no GPU in CI, so the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``),
which executes them on CPU tensors with numpy. Triton reads that variable when a kernel is
defined (before 3.4: when triton is imported), so the kernels run in a child process that
starts with it set: this file run as a script computes every case and writes the differences to
a JSON file; the tests below assert on them. That keeps the interpreter out of this process,
whatever was imported before.

Each case compares the kernels' forward output and the gradients of the value maps, locations
and weights with :func:`ms_deform_attn_sample_pytorch` (``F.grid_sample``) on the same inputs,
and the float64 case also runs ``torch.autograd.gradcheck`` on the kernels (fast mode: finite
differences along random directions; the full Jacobian would take minutes in the interpreter).
The sizes are tiny because the interpreter is slow (about 10 ms per program and sample point).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from sqr.layers import ms_deform_attn
from sqr.layers.ms_deform_attn import ms_deform_attn_sample, ms_deform_attn_sample_pytorch

ROOT = Path(__file__).resolve().parents[2]

# name -> batch, heads, channels per head, queries, points, level shapes (H, W), dtype, how the
# locations are drawn. Channels 3 and 5 are not powers of two (the kernels mask the rest of the
# block); 70 queries are two blocks of 64, the second partial.
CASES = {
    # Locations uniform in [-0.3, 1.3]: about a third of the samples have corners off the map.
    "float64_three_levels": (2, 2, 3, 5, 2, [(4, 5), (2, 3), (1, 1)], "float64", "uniform"),
    # Pixel centres, the map's borders (0 and 1), half a pixel and far outside, and +-1e6.
    "float64_exact_and_far_locations": (1, 2, 5, 6, 4, [(2, 3), (3, 1)], "float64", "special"),
    "float32_two_query_blocks": (1, 2, 4, 70, 2, [(3, 4), (2, 2)], "float32", "uniform"),
    # Half-precision inputs are sampled in float32, as the pure path upcasts them.
    "float16_inputs": (1, 1, 4, 3, 2, [(3, 4), (2, 2)], "float16", "uniform"),
}
# Largest difference allowed, relative to the largest magnitude of the pure path's tensor: the
# kernels sum the same terms in another order (bilinear corners, then points and levels).
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-5}
QUANTITIES = ("forward", "grad_value", "grad_locations", "grad_weights")


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
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Value maps [B*M, D, H_l, W_l], locations [B, N, M, L, P, 2] and weights [B, N, M, L, P]."""
    gen = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    maps = [torch.randn(batch * heads, channels, h, w, generator=gen) for h, w in shapes]
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
    return [m.to(dtype) for m in maps], locations.to(dtype), weights.to(dtype)


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over max |b| (the pure path's), 0 when both are all zero."""
    scale = b.abs().max().item()
    diff = (a.double() - b.double()).abs().max().item()
    return diff / scale if scale else diff


def compare_case(name: str) -> dict:
    """Run one case through both paths (the caller has the interpreter on); the differences."""
    from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

    *sizes, dtype_name, kind = CASES[name]
    maps, locations, weights = make_inputs(*sizes, getattr(torch, dtype_name), kind)
    results = {}
    outputs = {}
    for path, sample in (
        ("pure", ms_deform_attn_sample_pytorch),
        ("triton", ms_deform_attn_sample_triton),
    ):
        leaves = [m.clone().requires_grad_() for m in maps]
        loc = locations.clone().requires_grad_()
        w = weights.clone().requires_grad_()
        out = sample(leaves, loc, w)
        # A fixed, uneven output gradient, so that every channel and query counts differently.
        grad_out = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view_as(out)
        grads = torch.autograd.grad(out, [*leaves, loc, w], grad_out)
        outputs[path] = (out, torch.cat([g.flatten() for g in grads[:-2]]), *grads[-2:])
        results[f"{path}_dtype"] = str(out.dtype)
    for quantity, a, b in zip(QUANTITIES, outputs["triton"], outputs["pure"], strict=True):
        results[quantity] = max_relative_difference(a, b)
        results[f"{quantity}_nonzero"] = bool(b.abs().max() > 0)
    if dtype_name == "float64" and kind == "uniform":
        levels = len(maps)

        def sample(*tensors: torch.Tensor) -> torch.Tensor:
            return ms_deform_attn_sample_triton(tensors[:levels], *tensors[levels:])

        inputs = tuple(t.clone().requires_grad_() for t in (*maps, locations, weights))
        results["gradcheck"] = torch.autograd.gradcheck(
            sample, inputs, fast_mode=True, raise_exception=False
        )
    return results


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every case's differences, computed by this file run under Triton's interpreter."""
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
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(CASES))
def test_kernels_equal_the_pure_path(interpreted: dict[str, dict], name: str) -> None:
    result = interpreted[name]
    tolerance = TOLERANCE[CASES[name][-2]]
    for quantity in QUANTITIES:
        assert result[f"{quantity}_nonzero"], f"{quantity} is all zero: the case proves nothing"
        assert result[quantity] <= tolerance, (quantity, result[quantity])
    # Both at least float32: half precision upcast, float64 kept.
    assert result["triton_dtype"] == result["pure_dtype"]
    assert result["triton_dtype"] == ("torch.float64" if "64" in name else "torch.float32")


def test_gradcheck_in_float64(interpreted: dict[str, dict]) -> None:
    assert interpreted["float64_three_levels"]["gradcheck"] is True


def test_cpu_tensors_take_the_pure_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path is not even looked up for CPU tensors.
    looked_up = mock.Mock(side_effect=AssertionError("fast path looked up on CPU"))
    monkeypatch.setattr(ms_deform_attn, "_triton_sampler", looked_up)
    maps, locations, weights = make_inputs(
        1, 2, 3, 4, 2, [(3, 4), (2, 2)], torch.float32, "uniform"
    )
    out = ms_deform_attn_sample(maps, locations, weights)
    assert torch.equal(out, ms_deform_attn_sample_pytorch(maps, locations, weights))
    looked_up.assert_not_called()


@pytest.mark.parametrize("available", [True, False])
def test_cuda_tensors_take_the_fast_path_when_triton_imports(
    monkeypatch: pytest.MonkeyPatch, available: bool
) -> None:
    # No CUDA tensor can exist here: a stand-in that says it is on CUDA checks the choice.
    fast = mock.Mock(return_value="fast")
    pure = mock.Mock(return_value="pure")
    monkeypatch.setattr(ms_deform_attn, "_triton_sampler", lambda: fast if available else None)
    monkeypatch.setattr(ms_deform_attn, "ms_deform_attn_sample_pytorch", pure)
    locations = mock.Mock(is_cuda=True)
    result = ms_deform_attn_sample(["maps"], locations, "weights")
    assert result == ("fast" if available else "pure")
    (fast if available else pure).assert_called_once_with(["maps"], locations, "weights")


def test_shape_errors_are_named_before_any_kernel_runs() -> None:
    pytest.importorskip("triton")
    from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

    maps, locations, weights = make_inputs(
        1, 2, 3, 4, 2, [(3, 4), (2, 2)], torch.float32, "uniform"
    )
    with pytest.raises(ValueError, match="2 value maps for sampling locations on 3 levels"):
        ms_deform_attn_sample_triton(
            maps, torch.cat([locations, locations[:, :, :, :1]], 3), weights
        )
    with pytest.raises(ValueError, match="do not match"):
        ms_deform_attn_sample_triton(maps, locations, weights[..., :1])
    with pytest.raises(ValueError, match=r"B\*M = 1 \* 2"):  # maps of 3 heads for 2
        ms_deform_attn_sample_triton([m.repeat(3, 1, 1, 1)[:3] for m in maps], locations, weights)


def test_triton_sampler_is_found_where_triton_imports() -> None:
    pytest.importorskip("triton")
    from sqr.layers.ms_deform_attn_triton import ms_deform_attn_sample_triton

    assert ms_deform_attn._triton_sampler() is ms_deform_attn_sample_triton


if __name__ == "__main__":
    # The child of the ``interpreted`` fixture: argv[1] is where the differences go.
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1: the kernels need Triton's interpreter")
    Path(sys.argv[1]).write_text(json.dumps({name: compare_case(name) for name in CASES}))
