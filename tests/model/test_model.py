import logging
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fibrosis.io import file_sha256
from fibrosis.model.arch import ARCHS
from fibrosis.model.net import (IMAGENET_MEAN, IMAGENET_STD, GrayRGBStem, WeightsError, build_model,
                                fold_first_conv, imagenet_file)
from helpers.paths import SHARED

SHARED_MOBILENET = (SHARED / "weights"
                    / "mobilenet_v2-imagenet-features.pth")
MOBILENET_SHA = "221f65aa066671af07650dac6d86a51916c5a61f97e50f238fd3aa7a56bef257"


def _tv_file(tmp_path: Path, arch: str, drop: tuple[str, ...] = (), extra: dict | None = None) -> tuple[Path, nn.Module]:
    torch.manual_seed(1)
    tv = torchvision.models.get_model(arch, weights=None).eval()
    # Non-trivial BN statistics so a wrong load cannot pass by accident.
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in tv.state_dict().items() if k not in drop}
    state.update(extra or {})
    path = tmp_path / f"{arch}.pth"
    torch.save(state, path)
    return path, tv


def test_arch_list():
    assert set(ARCHS) == {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                          "densenet121", "efficientnet_b0", "mobilenet_v2"}


# resnet34/101/152 share resnet18/50's code path (BasicBlock / Bottleneck): not rebuilt here.
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "densenet121", "efficientnet_b0",
                                  "mobilenet_v2"])
def test_every_arch_gives_one_logit_from_gray_input(arch):
    model = build_model(arch, "none", input_size=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 1)
    assert model.preprocessing.in_chans == 1 and model.preprocessing.input_size == 32
    assert not model.pretrained and model.weights_info["source"] == "none"
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert isinstance(first, GrayRGBStem) and first.in_channels == 3  # the pretrained RGB stem, fed gray
    feats = []
    model.cam_layer.register_forward_hook(lambda m, i, o: feats.append(o))
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    assert feats[0].ndim == 4  # a spatial map for Grad-CAM


# One of each stem code path (resnet34/101/152 build their stem as resnet18/50 do).
@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenet_v2"])
def test_gray_model_equals_pretrained_rgb_model_on_per_channel_normalised_gray(tmp_path, arch):
    """The stem is exact: gray g in [0, 1] gives what torchvision's RGB network gives for the
    photograph (g, g, g) normalised per channel, zero-padded borders included (so the image
    is dark at the edge, where a wrong padding value would show)."""
    path, tv = _tv_file(tmp_path, arch)
    model = build_model(arch, str(path), input_size=48).eval()
    setattr(tv, "fc" if arch.startswith("resnet") else "classifier", nn.Identity())
    g = torch.rand(2, 1, 48, 48)
    g[:, :, :6] = 0.0  # black border rows, as the cache pads
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = model.forward_features(g)
        ref = tv((g.repeat(1, 3, 1, 1) - mean) / std)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert model.preprocessing.gray_fold == "rgb-stem"
    assert (model.preprocessing.mean, model.preprocessing.std) == (0.0, 1.0)  # the stem normalises


def test_summed_fold_of_older_checkpoints_is_what_it_was(tmp_path):
    """The legacy stem: RGB weights summed onto one channel fed (g - 0.449) / 0.226; equal to the
    RGB network on that one normalised image replicated (not per channel: that is the flaw)."""
    path, tv = _tv_file(tmp_path, "resnet18")
    model = build_model("resnet18", str(path), input_size=48, gray_fold="summed").eval()
    tv.fc = nn.Identity()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), tv(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)
    assert model.backbone.conv1.in_channels == 1
    assert model.preprocessing.mean == pytest.approx(sum(IMAGENET_MEAN) / 3)


def test_fold_sums_channel_weights_hand_checked():
    conv = nn.Conv2d(3, 2, 1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]]).view(2, 3, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    folded = fold_first_conv(conv)
    assert folded.weight.flatten().tolist() == [6.0, -0.5]
    assert folded(torch.ones(1, 1, 1, 1)).flatten().tolist() == [6.5, -1.0]


def test_local_weights_load_and_record_sha(tmp_path):
    path, tv = _tv_file(tmp_path, "resnet18", drop=("fc.weight", "fc.bias"))
    model = build_model("resnet18", str(path), weights_sha256=file_sha256(path))
    assert model.pretrained and model.weights_info["sha256"] == file_sha256(path)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)
    assert torch.equal(model.backbone.conv1.weight, tv.conv1.weight)


def test_local_weights_with_imagenet_classifier_are_accepted(tmp_path):
    path, _ = _tv_file(tmp_path, "resnet18")  # fc.* present: dropped, the head is new
    assert build_model("resnet18", str(path)).pretrained


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path, _ = _tv_file(tmp_path, "resnet18", drop=("layer3.0.bn1.weight",),
                       extra={"layer9.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"layer3\.0\.bn1\.weight.*layer9\.weight"):
        build_model("resnet18", str(path))


def test_shape_mismatch_is_refused(tmp_path):
    path, _ = _tv_file(tmp_path, "resnet18", extra={"layer1.0.conv1.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight"):
        build_model("resnet18", str(path))


def test_wrong_sha_and_missing_file(tmp_path):
    path, _ = _tv_file(tmp_path, "resnet18")
    with pytest.raises(WeightsError, match="expected model.weights_sha256=00ff"):
        build_model("resnet18", str(path), weights_sha256="00ff")
    with pytest.raises(WeightsError, match="file not found"):
        build_model("resnet18", str(tmp_path / "nope.pth"))


def test_pickled_code_is_not_loaded(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "obj": nn.ReLU()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        build_model("resnet18", str(path))


def test_unknown_arch_lists_allowed():
    with pytest.raises(ValueError, match="resnet50"):
        build_model("vgg16")


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty torch hub dir + an unreachable proxy: what an air-gapped site sees."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_imagenet_unavailable_names_the_file_and_place(offline):
    with pytest.raises(WeightsError) as err:
        build_model("resnet50", "imagenet")
    msg = str(err.value)
    assert "resnet50-11ad3fa6.pth" in msg and str(offline) in msg and "model.weights" in msg


def test_imagenet_unavailable_demo_proceeds_loudly(offline, caplog):
    with caplog.at_level(logging.WARNING, logger="fibrosis.model.net"):
        model = build_model("resnet18", "imagenet", allow_random_init=True)
    assert not model.pretrained
    assert "NOT pretrained" in caplog.text
    assert model.weights_info["source"].startswith("random-init")


def test_imagenet_file_with_wrong_hash_is_refused(offline):
    _, path = imagenet_file("resnet18")
    path.parent.mkdir(parents=True)
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="sha256"):
        build_model("resnet18", "imagenet")


@pytest.mark.shared
def test_shared_mobilenet_imagenet_weights_load():
    if not SHARED_MOBILENET.is_file():
        pytest.skip("../shared/weights absent")
    model = build_model("mobilenet_v2", str(SHARED_MOBILENET), weights_sha256=MOBILENET_SHA)
    assert model.pretrained and model.weights_info["sha256"] == MOBILENET_SHA
    state = torch.load(SHARED_MOBILENET, weights_only=True)
    assert torch.equal(model.backbone.features[0][0].weight, state["features.0.0.weight"])
    assert torch.equal(model.backbone.features[18][1].running_mean, state["features.18.1.running_mean"])
