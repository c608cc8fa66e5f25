"""Inference engines: agreement arithmetic, each engine against eager fp32, ONNX export cache, selection."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fibrosis.model import engine as E
from fibrosis.model.net import build_model


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return build_model("resnet18", "none", input_size=32).eval()


@pytest.fixture(scope="module")
def batch(net):
    return E.verification_batch(32, net.preprocessing, n=4)


def test_agreement_hand_checked():
    ref = np.array([0.0, 1.0, -2.0])
    same = E.agreement("onnx", ref, ref + 5e-4, threshold=0.5)
    assert same.ok and same.max_abs_logit == pytest.approx(5e-4) and same.decisions_differ == 0
    off = E.agreement("onnx", ref, ref + 2e-3)
    assert not off.ok and off.max_abs_logit == pytest.approx(2e-3)
    # logit 0 -> p 0.5 sits on the threshold: a flip there is inside the tolerance band...
    edge = E.agreement("bf16", ref, np.array([-0.01, 1.0, -2.0]), threshold=0.5)
    assert edge.decisions_differ == 0 and edge.ok
    # ...but a flip of a case far from the threshold is a disagreement.
    far = E.agreement("bf16", ref, np.array([0.0, 1.0, -2.0]), calibrate=lambda z: z, threshold=0.0)
    assert far.ok
    flip = E.agreement("bf16", np.array([0.2]), np.array([-0.04]), calibrate=lambda z: z, threshold=0.0)
    assert flip.decisions_differ == 1 and not flip.ok
    nan = E.agreement("onnx", ref, np.array([0.0, np.nan, 1.0]))
    assert not nan.ok
    # bf16: relative part of the band; a logit of 10 may be 0.05 + 0.02 * 10 = 0.25 off
    big = E.agreement("bf16", np.array([10.0]), np.array([10.24]), threshold=0.5)
    assert big.ok and big.max_abs_logit == pytest.approx(0.24)
    assert not E.agreement("bf16", np.array([10.0]), np.array([10.26])).ok
    assert not E.agreement("onnx", np.array([10.0]), np.array([10.01])).ok  # fp32: absolute only


def test_verification_batch_deterministic_and_normalised(net):
    a = E.verification_batch(32, net.preprocessing, n=2, seed=3)
    b = E.verification_batch(32, net.preprocessing, n=2, seed=3)
    assert a.shape == (2, 1, 32, 32) and a.dtype == np.float32 and np.array_equal(a, b)
    lo = (0 - net.preprocessing.mean) / net.preprocessing.std
    hi = (1 - net.preprocessing.mean) / net.preprocessing.std
    assert a.min() >= lo - 1e-6 and a.max() <= hi + 1e-6 and a.std() > 0.1


def test_eager_is_plain_model_forward(net, batch):
    with torch.no_grad():
        ref = net(torch.from_numpy(batch))[:, 0].numpy()
    got = E.TorchEngine(net, "eager", torch.device("cpu"))(batch)
    assert got.dtype == np.float32 and got.shape == (4,)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("name", ["channels_last", "bf16"])
def test_torch_engines_within_tolerance(net, batch, name):
    eng, agree = E.select_engine(net, name, sample=batch, threshold=0.5)
    assert eng.name == name and agree.ok and agree.max_abs_logit <= E.TOLERANCES[name].logit
    conv = next(m for m in eng.model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    if name == "bf16":  # really ran in bf16: rounding shows
        assert agree.max_abs_logit > 0


@pytest.mark.slow
def test_onnx_export_cached_and_agrees(net, batch, tmp_path):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "m.abc.onnx"
    eng, agree = E.select_engine(net, "onnx", onnx_path=path, sample=batch, threshold=0.5)
    assert eng.name == "onnx" and agree.ok and path.is_file()
    assert agree.max_abs_logit < 1e-4
    # variable batch size (last batch of a run is smaller)
    assert eng(batch[:3]).shape == (3,)
    mtime = path.stat().st_mtime_ns
    E.select_engine(net, "onnx", onnx_path=path, sample=batch)  # reuses the export
    assert path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*tmp*"))


def test_onnx_cache_path_keyed_by_checkpoint_hash(tmp_path):
    ckpt = tmp_path / "best.pt"
    assert E.onnx_cache_path(ckpt, "ab" * 32) == tmp_path / f"best.{'ab' * 8}.onnx"


class _Off(E.Engine):
    """A deliberately wrong engine (e.g. a bad export): eager + 0.1 on every logit."""

    name = "channels_last"

    def __init__(self, net):
        self.inner = E.TorchEngine(net, "eager", torch.device("cpu"))

    def __call__(self, x):
        return self.inner(x) + np.float32(0.1)


@pytest.mark.slow
def test_disagreeing_engine_refused_explicitly_and_skipped_by_auto(net, batch, monkeypatch):
    real = E.make_engine
    monkeypatch.setattr(E, "make_engine", lambda model, name, **kw: _Off(model) if name == "channels_last"
                        else real(model, name, **kw))
    monkeypatch.setattr(E, "auto_order", lambda device: ["channels_last", "eager"])
    with pytest.raises(E.EngineError, match="disagrees"):
        E.select_engine(net, "channels_last", sample=batch)
    eng, agree = E.select_engine(net, "auto", sample=batch)
    assert eng.name == "eager" and agree.max_abs_logit == 0


def test_unknown_engine_named_with_allowed_set(net):
    with pytest.raises(ValueError, match=r"'tensorrt'.*allowed.*onnx"):
        E.select_engine(net, "tensorrt")


def test_auto_order_cpu(monkeypatch):
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(E, "onnxruntime_available", lambda: True)
    assert E.auto_order(torch.device("cpu")) == ["onnx", "channels_last", "eager"]
    monkeypatch.setattr(E, "onnxruntime_available", lambda: False)
    assert E.auto_order(torch.device("cpu")) == ["channels_last", "eager"]
    monkeypatch.setattr(E, "cpu_has_native_bf16", lambda: True)
    assert E.auto_order(torch.device("cpu"))[0] == "bf16"
    assert E.auto_order(torch.device("cuda"))[0] == "bf16"
