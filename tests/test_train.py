"""The one training loop: schedule, resume and checkpoint safety."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from orandnet_lib.methods.classification import classification_scores
from orandnet_lib.core.metrics import average_precision, multilabel_f1
from orandnet_lib.core.train import InterruptTraining, TrainConfig, fit, fusable, load_checkpoint, make_optimizer, poly_lr


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, 8, 8, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).float().unsqueeze(1)
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 1))


def _loss(model, batch):
    x, y = batch
    return nn.functional.binary_cross_entropy_with_logits(model(x), y), {"positives": float(y.mean())}


CFG = TrainConfig(epochs=3, batch_size=8, lr=0.05, seed=5)


def test_poly_schedule():
    assert poly_lr(0, 100, 0.9) == 1.0
    assert poly_lr(50, 100, 1.0) == pytest.approx(0.5)
    assert poly_lr(100, 100, 0.9) == 0.0
    assert poly_lr(0, 100, 0.9, warmup=4) == pytest.approx(0.25)


def test_loss_falls_and_history_is_logged():
    model = _model()
    history = fit(model, _data(), _loss, TrainConfig(epochs=6, batch_size=8, lr=0.1, seed=0), progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"loss", "lr", "positives", "seconds"} <= set(history[0])


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_the_fused_optimizer_makes_the_per_tensor_loops_update(name):
    """make_optimizer takes torch's fused kernels on the CPU; three steps of them, with two learning-rate
    groups and weight decay, move the weights as torch's per-tensor loop does."""
    cfg = TrainConfig(optimizer=name, lr=0.05, weight_decay=0.01)
    fused_model, loop_model = _model().eval(), _model().eval()  # eval: no dropout masks to tell apart
    groups = lambda m: [{"params": m[0].parameters(), "lr_mult": 1.0}, {"params": m[5].parameters(), "lr_mult": 10.0}]
    fused = make_optimizer(groups(fused_model), cfg)
    assert fused.defaults["fused"] is True
    g = [{"params": list(m.parameters()), "lr": 0.05 * k} for m, k in ((loop_model[0], 1.0), (loop_model[5], 10.0))]
    loop = (torch.optim.SGD(g, lr=0.05, momentum=0.9, weight_decay=0.01, foreach=False) if name == "sgd"
            else torch.optim.AdamW(g, lr=0.05, weight_decay=0.01, foreach=False))
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any((a != p).any() for a, p in zip(fused_model.parameters(), _model().parameters()))


def test_fusable_wants_float_parameters_on_one_device():
    assert fusable([torch.zeros(2, requires_grad=True), torch.zeros(3, requires_grad=True)]) is True
    assert fusable([torch.zeros(2, dtype=torch.int64)]) is None
    assert fusable([torch.zeros(2, device="meta")]) is None
    assert fusable([]) is None


def test_max_steps_trains_exactly_that_many_steps_across_epochs(tmp_path):
    # 40 samples at batch 8: 5 steps an epoch; 12 steps end two steps into the third epoch
    cfg = TrainConfig(epochs=1, batch_size=8, lr=0.05, seed=5, max_steps=12)
    history = fit(_model(), _data(), _loss, cfg, checkpoint=tmp_path / "c.pt", progress=False)
    assert [h["step"] for h in history] == [5, 10, 12]
    assert history[-1]["epoch"] == pytest.approx(12 / 5)
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 12
    assert history[-1]["lr"] == pytest.approx(0.05 * poly_lr(11, 12, 0.9))
    # max_steps unset is not in the learning config: the keys of every other training stay as they were
    from orandnet_lib.core.train import learning_config
    assert "max_steps" not in learning_config(CFG) and learning_config(cfg)["max_steps"] == 12


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = _model()
    h1 = fit(straight, _data(), _loss, CFG, checkpoint=tmp_path / "a.pt", progress=False)
    resumed = _model()
    with pytest.raises(InterruptTraining):  # killed in the middle of epoch 2
        fit(resumed, _data(), _loss, CFG, checkpoint=tmp_path / "b.pt", progress=False, stop_after_steps=7)
    resumed = _model()  # a fresh process: weights come only from the checkpoint
    h2 = fit(resumed, _data(), _loss, CFG, checkpoint=tmp_path / "b.pt", progress=False)
    for p, q in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert [h["loss"] for h in h1] == pytest.approx([h["loss"] for h in h2])
    state = load_checkpoint(tmp_path / "b.pt")  # weights_only=True: no arbitrary unpickling
    assert state["step"] == 15


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    fit(_model(), _data(), _loss, CFG, checkpoint=tmp_path / "c.pt", progress=False)
    with pytest.raises(ValueError, match="another training config"):
        fit(_model(), _data(), _loss, TrainConfig(epochs=3, batch_size=8, lr=0.01, seed=5),
            checkpoint=tmp_path / "c.pt", progress=False)


def test_divergence_is_reported():
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(_model(), _data(), lambda m, b: (m(b[0]).sum() * float("inf"), {}), CFG, progress=False)


def test_average_precision_and_f1_by_hand():
    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6], [0.2, 0.2]])
    targets = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    # class 0 ranking: + - + -  -> AP = (1/1 + 2/3) / 2; class 1 ranking: + + - - -> AP = 1
    np.testing.assert_allclose(average_precision(scores, targets), [(1 + 2 / 3) / 2, 1.0])
    # F1 at 0.5: class 0 predicts {0, 1}, true {0, 2}: 2*1/(2+2) = 0.5; class 1 predicts {1, 2} = true -> 1
    np.testing.assert_allclose(multilabel_f1(scores, targets), [0.5, 1.0])
    s = classification_scores(scores, targets)
    assert s["map"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1) / 2) and s["f1"] == pytest.approx(75.0)
