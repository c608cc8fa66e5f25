"""Auxiliary-finding heads (issue 14): masked loss, targets, model heads, checkpoint round trip."""
import numpy as np
import pytest
import torch

from fibrosis.model.net import build_model, set_aux_heads
from fibrosis.train.aux import aux_pos_weight, aux_targets, choose_aux, masked_bce

NAN = float("nan")


def test_masked_bce_is_the_mean_over_labelled_entries_and_ignores_missing_ones_exactly():
    z = torch.tensor([[0.0, 2.0], [1.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1.0, NAN], [0.0, 1.0]])
    pw = torch.tensor([2.0, 3.0])
    loss = masked_bce(z, t, pw)
    # By hand: 2*log(1+e^0), log(1+e^1), 3*log(1+e^1) over the 3 labelled entries.
    expected = (2 * np.log(2) + np.log1p(np.e) + 3 * np.log1p(np.e)) / 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert z.grad[0, 1] == 0.0  # the missing entry: exactly no gradient
    assert (z.grad[[0, 1, 1], [0, 0, 1]] != 0).all()
    assert torch.isfinite(z.grad).all()


def test_masked_bce_of_an_all_missing_batch_is_zero_not_nan():
    z = torch.zeros(3, 2, requires_grad=True)
    loss = masked_bce(z, torch.full((3, 2), NAN), torch.ones(2))
    loss.backward()
    assert float(loss.detach()) == 0.0 and (z.grad == 0).all()


ROWS = [{"path": "a", "aux_labels": "Effusion=1|Mass=0"}, {"path": "b", "aux_labels": "Effusion=0"},
        {"path": "c", "aux_labels": ""}, {"path": "d", "aux_labels": "Effusion=1|Hernia=1|Mass=0"},
        {"path": "e"}]  # a manifest from before aux_labels existed


def test_targets_keep_missing_as_nan_never_negative():
    y = aux_targets(ROWS, [0, 1, 2, 3, 4], ["Effusion", "Mass"])
    np.testing.assert_array_equal(y, [[1, 0], [0, NAN], [NAN, NAN], [1, 0], [NAN, NAN]])
    np.testing.assert_allclose(aux_pos_weight(y), [0.5, 1.0])  # Mass: no positive -> plain BCE


def test_choose_aux_needs_positives_and_a_negative():
    names, dropped = choose_aux(ROWS, range(5), min_positives=2)
    assert names == ("Effusion",)
    assert set(dropped) == {"Hernia", "Mass"} and "0 positive" in dropped["Mass"]


def test_aux_heads_leave_the_fibrosis_output_unchanged():
    torch.manual_seed(0)
    model = build_model("resnet18", "none", input_size=32).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
        set_aux_heads(model, ["Effusion", "Mass"])
        model.eval()
        after, both = model(x), model.forward_all(x)
    assert after.shape == (3, 1) and both.shape == (3, 3)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(both[:, :1], before)
    assert (both[:, 1:] == 0).all()  # zero-initialised: no kick to the backbone at step one
    with pytest.raises(ValueError, match="distinct"):
        set_aux_heads(model, ["A", "A"])


def test_checkpoint_with_aux_heads_round_trips(tmp_path):
    from fibrosis.model.checkpoint import aux_names, load_model, save_checkpoint
    from fibrosis.config import config_to_dict, load_config

    torch.manual_seed(0)
    model = set_aux_heads(build_model("resnet18", "none", input_size=32), ["Effusion", "Mass"])
    with torch.no_grad():
        model.aux_head[-1].weight.normal_()
    cfg = load_config(None, ["model.arch=resnet18", "model.weights=none", "model.input_size=32"])
    payload = {"model": model.state_dict(), "config": config_to_dict(cfg), "arch": "resnet18",
               "preprocessing": model.preprocessing, "weights_info": model.weights_info, "pretrained": False,
               "manifest_hash": "x", "aux": {"names": ["Effusion", "Mass"], "weight": 0.5}}
    path = save_checkpoint(tmp_path / "a.pt", payload)
    loaded, ckpt = load_model(path)
    assert aux_names(ckpt) == ("Effusion", "Mass") and loaded.aux_names == ("Effusion", "Mass")
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_all(x), model.eval().forward_all(x))
    assert aux_names({}) == ()
