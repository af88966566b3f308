"""`fastconv bench` on the layer cases (depthwise D*, transposed X*, average pools A*/G*, NHWC twins, the
SeparableConvNet step T3): the cases, their inputs, every peer computing the same thing, the report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from fastconv import bench
from fastconv.bench.cases import (
    BY_NAME,
    LAYER_CASES,
    AvgPoolCase,
    GroupConvCase,
    PoolCase,
    TrainCase,
    TransposedConvCase,
    conv_inputs,
    nchw_twin,
    pool_inputs,
    select,
)
from fastconv.bench.peers import FastconvPeer, JaxPeer, TorchPeer


def test_layer_cases_are_selectable_by_name_and_listed(capsys):
    assert [c.name for c in select("d1,X1,a1,s4-nhwc")] == ["D1", "X1", "A1", "S4-NHWC"]
    assert bench.main(["--list-shapes"]) == 0
    printed = capsys.readouterr().out
    for name in ("D1", "D2", "X1", "A1", "A2", "G1", "S4-NHWC", "D1-NHWC", "P2-NHWC", "T3"):
        assert f"\n{name}  " in f"\n{printed}"


def test_layer_cases_have_pytorchs_output_shapes():
    assert BY_NAME["D1"].out_shape == (32, 64, 28, 28)
    assert BY_NAME["D2"].out_shape == (32, 64, 14, 14)
    assert BY_NAME["X1"].out_shape == (32, 32, 28, 28)
    assert BY_NAME["A1"].out_shape == (32, 64, 14, 14)
    assert BY_NAME["A2"].out_shape == (32, 32, 16, 16)
    assert BY_NAME["G1"].out_shape == (64, 256, 1, 1)
    assert BY_NAME["P2-NHWC"].out_shape == BY_NAME["P2"].out_shape


@pytest.mark.parametrize("name", ["S4-NHWC", "D1-NHWC", "P2-NHWC"])
def test_an_nhwc_case_holds_its_nchw_twins_numbers_transposed(name):
    case = BY_NAME[name]
    twin = BY_NAME[nchw_twin(case)]
    inputs = pool_inputs if isinstance(case, PoolCase) else conv_inputs
    nhwc, nchw = inputs(case, "float32"), inputs(twin, "float32")
    for key in ("x", "dout"):
        assert nhwc[key].flags.c_contiguous
        np.testing.assert_array_equal(nhwc[key], nchw[key].transpose(0, 2, 3, 1))
    if "W" in nhwc:
        np.testing.assert_array_equal(nhwc["W"], nchw["W"])
    assert nchw_twin(twin) is None


def _small(case):
    """The case at a test's size: batch 2, 7x7 images (odd: the edges of strided windows), channels / 8."""
    if isinstance(case, GroupConvCase):
        n, c, _, _ = case.x_shape
        f, _, k, _ = case.w_shape
        groups = case.groups // 8 if case.groups > 1 else 1
        return dataclasses.replace(
            case, x_shape=(2, c // 8, 7, 7), w_shape=(f // 8, c // 8 // groups, k, k), groups=groups
        )
    if isinstance(case, TransposedConvCase):
        c_in, c_out, k, _ = case.w_shape
        return dataclasses.replace(case, x_shape=(2, c_in // 8, 7, 7), w_shape=(c_in // 8, c_out // 8, k, k))
    return dataclasses.replace(case, x_shape=(2, case.x_shape[1] // 8, 7, 7))


def _arrays(result, case):
    """A peer's result as host arrays, images in the case's layout: the output (not a max pool's argmax),
    or the gradients (dx, dW, db of a convolution: dW keeps its layout)."""
    if not isinstance(result, (tuple, list)):
        result = (result,)
    elif isinstance(case, PoolCase):
        result = result[:1]  # (y, argmax): PyTorch's indices and fastconv's argmax differ by design
    out = []
    for i, a in enumerate(result):
        if hasattr(a, "detach"):  # a torch tensor: (N, C, H, W) whatever its memory format
            a = a.detach()
            if a.dim() == 4 and i != 1 and getattr(case, "layout", "NCHW") == "NHWC":
                a = a.permute(0, 2, 3, 1)
            a = a.contiguous().numpy()
        out.append(np.asarray(a))
    return out


LAYER_KERNEL_CASES = [c for c in LAYER_CASES if not isinstance(c, TrainCase)]


@pytest.mark.parametrize("case", LAYER_KERNEL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("variant", ["eager", "best"])
def test_fastconv_and_torch_compute_the_same_forward_and_backward(case, variant):
    torch = pytest.importorskip("torch")
    small = _small(case)
    torch_calls = TorchPeer(variant=variant).calls(small, "float64")
    ours = FastconvPeer("numpy").calls(small, "float64")
    for phase in ("forward", "backward"):
        got, want = _arrays(ours[phase](), small), _arrays(torch_calls[phase](), small)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)
    assert torch.get_default_dtype() == torch.float32  # nothing global changed


@pytest.mark.parametrize("case", LAYER_KERNEL_CASES, ids=lambda c: c.name)
def test_jax_computes_what_torch_computes(case):
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    small = _small(case)
    jax_calls, torch_calls = JaxPeer().calls(small, "float32"), TorchPeer().calls(small, "float32")
    for phase in ("forward", "backward"):
        got, want = _arrays(jax_calls[phase](), small), _arrays(torch_calls[phase](), small)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_torch_runs_an_nhwc_case_channels_last_in_every_variant():
    pytest.importorskip("torch")
    nhwc, nchw = BY_NAME["S4-NHWC"], BY_NAME["S4"]
    assert TorchPeer(variant="eager").variant_for(nhwc) == "channels_last"
    assert TorchPeer(variant="eager").variant_for(nchw) == "eager"
    assert TorchPeer(variant="no-mkldnn").variant_for(nhwc) == "channels_last+no-mkldnn"
    assert TorchPeer(variant="best").variant_for(BY_NAME["G1"]) == "eager"


def test_quick_run_of_layer_cases_prints_them_and_the_layout_ratios(tmp_path, capsys):
    pytest.importorskip("torch")
    out_json = tmp_path / "r.json"
    argv = ["--quick", "--backends", "numpy", "--no-jax", "--shapes", "D1,X1,A1,G1,P2,P2-NHWC"]
    assert bench.main([*argv, "--json", str(out_json), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "| D1 | x(32,64,28,28) W(64,1,3,3) s1 p1 g64 | " in printed
    assert "| X1 | transposed x(32,64,14,14) W(64,32,4,4) s2 p1 -> (32,32,28,28) | " in printed
    assert "| A1 | avg 2x2/2 p0 on (32,64,28,28) | " in printed
    assert "| G1 | global avg on (64,256,7,7) | " in printed
    assert "float32, NHWC / NCHW: each NHWC case's median time over its NCHW twin's" in printed
    [ratios] = [line for line in printed.splitlines() if line.startswith("| P2-NHWC | P2 |")]
    assert ratios.count("x / ") == 2  # numpy and torch: forward / backward
    doc = json.loads(out_json.read_text())
    assert all(r["median_ms"] > 0 for r in doc["results"])
    rows = {(r["shape"], r["peer"], r["phase"]): r for r in doc["results"]}
    assert rows[("P2-NHWC", "torch", "forward")]["variant"] == "channels_last"
    assert rows[("P2-NHWC", "numpy", "backward")]["twin"] == "P2"
    assert rows[("G1", "torch", "forward")]["variant"] == "eager"


def test_layout_table_needs_both_twins():
    rows = [
        {"dtype": "float32", "shape": s, "what": "w", "peer": "p", "phase": ph, "median_ms": ms, **extra}
        for s, ms, extra in (("S4", 2.0, {}), ("S4-NHWC", 3.0, {"twin": "S4"}))
        for ph in ("forward", "backward")
    ]
    assert "| S4-NHWC | S4 | 1.50x / 1.50x |" in bench.tables(rows)
    assert "NHWC / NCHW" not in bench.tables(rows[2:])


def test_separable_training_step_runs_on_numpy_and_matches_torchs_model_size(capsys):
    pytest.importorskip("torch")
    from fastconv.train.networks import SeparableConvNet

    assert bench.main(["--quick", "--backends", "numpy", "--no-jax", "--shapes", "T3", "-q"]) == 0
    assert "| T3 | train step: SeparableConvNet, batch 64, adam | " in capsys.readouterr().out
    ours = sum(p.size for p in SeparableConvNet(rng=0).params.values())
    assert _torch_model_size(TorchPeer(variant="eager")) == ours


def _torch_model_size(peer) -> int:
    """The number of parameters of PyTorch's T3 model, built as the peer builds it."""
    import torch

    captured = {}
    original = torch.optim.Adam.__init__

    def spy(self, params, *args, **kwargs):
        params = list(params)
        captured["n"] = sum(p.numel() for p in params)
        original(self, params, *args, **kwargs)

    torch.optim.Adam.__init__ = spy
    try:
        peer.train_step(BY_NAME["T3"], "float32")
    finally:
        torch.optim.Adam.__init__ = original
    return captured["n"]


def test_jax_separable_training_step_lowers_the_loss():
    pytest.importorskip("jax")
    step = JaxPeer().calls(BY_NAME["T3"], "float32")["step"]
    first = float(step())
    for _ in range(5):
        last = float(step())
    assert np.isfinite(first) and last < first


def test_avg_pool_case_describes_count_include_pad_and_global():
    assert "excl. pad" in BY_NAME["A2"].describe()
    assert AvgPoolCase("Z", (1, 2, 3, 3), kernel=3, stride=1, pad=0, count_include_pad=False).describe() == (
        "avg 3x3/1 p0 on (1,2,3,3)"
    )
