"""SeparableConvNet (strided conv, depthwise-separable block, transposed conv, global average pooling):
shapes, gradients on every backend, PyTorch's same network, training, and `fastconv train --model separable`."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fastconv
from fastconv.layers import Convolution, Deconvolution, GlobalAvgPooling
from fastconv.testing import gradcheck
from fastconv.train import loop
from fastconv.train.networks import SEPARABLE_CHANNELS, SeparableConvNet
from fastconv.train.optimizers import make_optimizer

SMALL = (4, 6, 4, 6)  # channels of a net small enough for central differences
needs_digits = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="digits needs scikit-learn"
)


def test_separable_net_has_the_documented_layers_and_shapes():
    net = SeparableConvNet(rng=0)
    c1, c2, c3, c4 = SEPARABLE_CHANNELS
    assert {k: v.shape for k, v in net.params.items()} == {
        "W1": (c1, 1, 3, 3),
        "b1": (c1,),
        "W2": (c1, 1, 3, 3),
        "b2": (c1,),
        "W3": (c2, c1, 1, 1),
        "b3": (c2,),
        "W4": (c2, c3, 2, 2),
        "b4": (c3,),
        "W5": (c4, c3, 3, 3),
        "b5": (c4,),
        "W6": (c4, 10),
        "b6": (10,),
    }
    assert net.layers["DWConv2"].groups == c1 and isinstance(net.layers["DWConv2"], Convolution)
    assert isinstance(net.layers["Deconv4"], Deconvolution) and net.layers["Deconv4"].stride == 2
    assert isinstance(net.layers["GAP6"], GlobalAvgPooling)
    assert net.params["W1"].dtype == np.float64
    assert net.layers["Conv1"].W is net.params["W1"]  # the layers hold the parameters themselves


@pytest.mark.parametrize("hw", [(28, 28), (8, 8), (7, 9)])
def test_separable_net_takes_any_image_size(hw, rng):
    net = SeparableConvNet((2, *hw), SMALL, 5, rng=0)
    x = rng.random((3, 2, *hw))
    assert net.predict(x).shape == (3, 5)
    # the transposed conv doubles what the strided conv halved (rounding up)
    assert net.layers["Conv5"].x.shape == (3, SMALL[2], 2 * -(-hw[0] // 2), 2 * -(-hw[1] // 2))


def test_separable_net_refuses_a_wrong_input_shape():
    net = SeparableConvNet((1, 8, 8), SMALL, rng=0)
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 8, 8\)"):
        net.predict(np.ones((2, 1, 9, 8)))
    with pytest.raises(ValueError, match="four positive widths"):
        SeparableConvNet((1, 8, 8), (4, 0, 4, 4))


@pytest.mark.parametrize("hw", [(8, 8), (7, 6)])
def test_separable_net_gradient_matches_central_differences(backend, hw, rng):
    net = SeparableConvNet((1, *hw), SMALL, 4, backend=backend, dtype=np.float64, rng=1)
    x = fastconv.to_device(rng.random((3, 1, *hw)), backend=backend)
    t = fastconv.to_device(np.array([0, 3, 1]), backend=backend)
    result = gradcheck(net, x, t, max_elements=30)
    assert set(result.errors) == {f"{p}{i}" for p in "Wb" for i in range(1, 7)}
    assert max(result.errors.values()) < 1e-4


def test_separable_net_float32_follows_float64(backend, rng):
    x, t = rng.random((4, 1, 8, 8)), np.array([1, 2, 3, 0])
    nets = {
        dt: SeparableConvNet((1, 8, 8), SMALL, 4, backend=backend, dtype=dt, rng=2)
        for dt in ("float32", "float64")
    }
    out = {}
    for dt, net in nets.items():
        loss, grads, _ = net.loss_and_gradient(fastconv.to_device(x.astype(dt), backend=backend), t)
        out[dt] = (loss, {k: fastconv.to_host(g) for k, g in grads.items()})
    assert out["float32"][0] == pytest.approx(out["float64"][0], rel=1e-5)
    for k, g in out["float64"][1].items():
        assert out["float32"][1][k].dtype == np.float32
        np.testing.assert_allclose(out["float32"][1][k], g, rtol=1e-3, atol=1e-5)


def test_separable_net_is_pytorchs_network_of_the_same_layers(rng):
    """The bench's PyTorch model of T3 (fastconv.bench.peers) computes the same loss and gradients."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    c1, c2, c3, c4 = SMALL
    net = SeparableConvNet((1, 9, 9), SMALL, 5, rng=3)
    model = nn.Sequential(
        nn.Conv2d(1, c1, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(c1, c1, 3, padding=1, groups=c1),
        nn.Conv2d(c1, c2, 1),
        nn.ReLU(),
        nn.ConvTranspose2d(c2, c3, 2, stride=2),
        nn.ReLU(),
        nn.Conv2d(c3, c4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c4, 5),
    ).double()
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        for i, layer in enumerate(layers, 1):
            w = net.params[f"W{i}"]
            layer.weight.copy_(torch.from_numpy(w.T.copy() if w.ndim == 2 else w))  # Linear: (out, in)
            # fresh, non-zero biases on both sides: zeros would hide a bias gradient sent to the wrong place
            b = rng.standard_normal(net.params[f"b{i}"].shape)
            net.params[f"b{i}"][...] = b
            layer.bias.copy_(torch.from_numpy(b))
    x, t = rng.random((4, 1, 9, 9)), np.array([0, 4, 2, 2])
    loss, grads, _ = net.loss_and_gradient(x, t)
    ref = nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(t))
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-6)  # the book's cross-entropy adds 1e-7 inside the log
    for i, layer in enumerate(layers, 1):
        dw = layer.weight.grad.numpy()
        np.testing.assert_allclose(grads[f"W{i}"], dw.T if dw.ndim == 2 else dw, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(grads[f"b{i}"], layer.bias.grad.numpy(), rtol=1e-9, atol=1e-12)


@needs_digits
def test_a_short_training_run_on_digits_lowers_the_loss_and_learns(backend):
    from fastconv.train.data import load_digits_dataset

    ds = load_digits_dataset()
    gen = np.random.default_rng(0)
    net = SeparableConvNet(ds.input_shape, backend=backend, dtype=np.float32, rng=gen)
    optimizer = make_optimizer("adam", 0.01)
    _, acc_before, _ = loop.evaluate(
        net, ds.x_test, ds.t_test, 500, place=lambda a: fastconv.to_device(a, backend=backend)
    )
    results = list(
        loop.train(
            net,
            optimizer,
            ds.x_train,
            ds.t_train,
            epochs=3,
            batch_size=32,
            rng=gen,
            place=lambda a: fastconv.to_device(np.ascontiguousarray(a), backend=backend),
            validation=(ds.x_test, ds.t_test),
            progress=False,
        )
    )
    assert results[-1].loss < results[0].loss
    assert results[-1].val_accuracy > max(0.6, acc_before + 0.4)


@needs_digits
def test_fastconv_train_model_separable_writes_a_checkpoint_that_resumes_exactly(tmp_path, capsys):
    from fastconv.train import trainer

    quick = [
        "--model",
        "separable",
        "--backend",
        "numpy",
        "--no-progress",
        "--no-plots",
        "--batch-size",
        "128",
    ]
    assert trainer.main([*quick, "--epochs", "2", "--out", str(tmp_path / "straight")]) == 0
    assert trainer.main([*quick, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert trainer.main([*quick, "--epochs", "2", "--out", str(tmp_path / "split"), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "model separable (" in printed and "resuming from" in printed
    straight, split = (np.load(tmp_path / d / "model.npz") for d in ("straight", "split"))
    assert sorted(straight.files) == sorted(f"{p}{i}" for p in "Wb" for i in range(1, 7))
    for k in straight.files:
        np.testing.assert_array_equal(straight[k], split[k])
