"""Engine parts: EMA rate, multi-label mixup, distillation, equation (1), early stopping, schedule, metrics."""
import logging

import numpy as np
import pytest
import torch
from torch import nn

from abaw_ce.errors import OptionError
from abaw_ce.train import runs
from abaw_ce.train.engine import EarlyStopping, make_ema, restart_schedule
from abaw_ce.train.loop import LossMonitor, make_accelerator, train_step
from abaw_ce.train.losses import (binary_kl, inverse_frequency_weights, masked_bce_pos_weight, mixup, pos_weights,
                                  weighted_bce)
from abaw_ce.train.metrics import evaluate_multilabel, multilabel_f1, tune_thresholds


def test_ema_moves_toward_raw_weights_at_the_configured_rate():
    model = nn.Linear(3, 2)
    ema = make_ema(model, decay=0.9)
    before = [p.detach().clone() for p in ema.module.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model, step=10)
    for old, new, raw in zip(before, ema.module.parameters(), model.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * raw, atol=1e-6)
    # timm's EMA copies the weights at the first update (step 1), then averages at the configured decay
    ema.update(nn.Linear(3, 2), step=1)
    assert not torch.allclose(ema.module.weight, model.weight)
    for _ in range(200):
        ema.update(model, step=2)
    for new, raw in zip(ema.module.parameters(), model.parameters()):
        assert torch.allclose(new, raw, atol=1e-6)


def test_mixup_is_convex_with_one_lambda_for_images_and_targets():
    n = 6
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 4, 4).clone()
    targets = torch.eye(n)[:, :6]
    mask = torch.ones(n, 6)
    mask[2, 4] = 0
    mixed, mixed_targets, mixed_mask, lam = mixup(images, targets, 0.4, np.random.default_rng(3), mask)
    assert 0 < lam < 1
    for i in range(n):
        value = mixed[i].unique()
        assert value.numel() == 1  # every pixel mixed with the same lambda
        partner = (value.item() - lam * i) / (1 - lam)
        j = int(round(partner))
        assert abs(partner - j) < 1e-4
        assert torch.allclose(mixed_targets[i], lam * targets[i] + (1 - lam) * targets[j])
        assert torch.allclose(mixed_mask[i], mask[i] * mask[j])
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(n))
    lams = [mixup(images, targets, 0.2, np.random.default_rng(s))[3] for s in range(200)]
    assert 0.45 < np.mean(lams) < 0.55  # Beta(a, a) is symmetric


def test_distillation_term_vanishes_when_student_equals_teacher():
    probs = torch.tensor([[0.1, 0.7, 0.5], [0.9, 0.2, 0.01]])
    assert binary_kl(torch.logit(probs), probs).abs().item() < 1e-6
    assert binary_kl(torch.zeros(2, 3), probs).item() > 0.01
    logits = torch.zeros(2, 3, requires_grad=True)
    binary_kl(logits, probs).backward()
    soft = torch.zeros(2, 3, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(soft, probs).backward()
    assert torch.allclose(logits.grad, soft.grad, atol=1e-6)  # same gradient as soft-target BCE


def test_class_weights_enter_the_loss_as_equation_one():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 6), (torch.rand(5, 6) > 0.5).float()
    weights = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0, 0.0])
    p = torch.sigmoid(logits)
    by_hand = -(weights * (targets * p.log() + (1 - targets) * (1 - p).log())).sum(dim=1) / 6
    assert weighted_bce(logits, targets, weights).item() == pytest.approx(by_hand.mean().item(), rel=1e-5)
    assert weighted_bce(logits, targets, weights).item() != pytest.approx(weighted_bce(logits, targets).item())


def test_inverse_frequency_weights_survive_a_class_that_never_occurs(caplog):
    y = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]])
    with caplog.at_level(logging.WARNING):
        w = inverse_frequency_weights(y, ["a", "b", "never"])
    assert np.all(np.isfinite(w)) and w[2] == 1.0
    assert w[1] / w[0] == pytest.approx(3.0)  # 1/4 positives vs 3/4
    assert "never" in caplog.text and "no positive" in caplog.text


def test_masked_au_loss_ignores_unlabelled_entries():
    logits, targets = torch.randn(4, 3), torch.ones(4, 3)
    mask = torch.tensor([[1, 1, 0]] * 4, dtype=torch.float32)
    changed = logits.clone()
    changed[:, 2] += 50
    weight = torch.tensor(pos_weights(np.ones((4, 3)) * [[1, 0, 1]], np.ones((4, 3))))
    assert masked_bce_pos_weight(logits, targets, mask, weight) == masked_bce_pos_weight(changed, targets, mask, weight)
    assert np.allclose(pos_weights(np.array([[1, 0], [0, 0], [0, 0], [0, 1]]), np.ones((4, 2))), [3.0, 3.0])


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    stop = EarlyStopping(patience=2)
    assert stop.step(0.5, 0) and not stop.stopped
    assert not stop.step(0.5, 1) and not stop.stopped  # equal is not better
    assert stop.step(0.6, 2) and stop.bad_epochs == 0
    stop.step(0.1, 3)
    stop.step(0.2, 4)
    assert stop.stopped and stop.best_epoch == 2 and stop.best_score == 0.6
    restored = EarlyStopping()
    restored.load_state_dict(stop.state_dict())
    assert restored == stop


def test_cosine_schedule_restarts_every_cycle_down_to_min_lr():
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    schedule = restart_schedule(optimizer, updates_per_epoch=10, epochs=20, warmup_epochs=1, restart_epochs=5,
                                min_lr=1e-8)
    lrs = []
    for update in range(200):
        schedule.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-8) and lrs[10] == pytest.approx(1e-3)  # warmup, then the peak
    assert min(lrs[10:60]) < 1e-5 and lrs[60] == pytest.approx(1e-3)  # a 50-update cycle, then a restart
    assert lrs[110] == pytest.approx(1e-3)


def test_schedule_cycles_of_their_own_length_and_peak():
    """restart_epochs and restart_lr_scale as lists: cycles of 3, 3 then 2 epochs (the 2 repeats), the third at
    0.3x the peak; a bad value is refused with the option's name."""
    optimizer = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
    schedule = restart_schedule(optimizer, updates_per_epoch=10, epochs=11, warmup_epochs=1, restart_epochs=[3, 3, 2],
                                min_lr=1e-8, restart_lr_scale=[1.0, 1.0, 0.3])
    lrs = []
    for update in range(110):
        schedule.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[10] == pytest.approx(1e-3) and lrs[40] == pytest.approx(1e-3)  # restarts after 30 updates
    assert lrs[70] == pytest.approx(3e-4) and lrs[90] == pytest.approx(3e-4)  # then 20-update cycles at 0.3x
    assert lrs[80] == pytest.approx(0.5 * (3e-4 - 1e-8) + 1e-8)  # halfway down a cosine cycle
    assert lrs[69] < 1e-5 and lrs[89] < 1e-5
    for bad in ([], [3, 0], "x"):
        with pytest.raises(OptionError, match="optim.restart_epochs"):
            restart_schedule(optimizer, 10, 11, 1, bad, 1e-8)


def test_f1_metrics_and_tuned_thresholds():
    probs = np.array([[0.9, 0.3], [0.6, 0.35], [0.2, 0.4], [0.1, 0.1]])
    truth = np.array([[1, 1], [1, 1], [0, 1], [0, 0]])
    result = multilabel_f1(probs, truth, ["a", "b"])
    assert result["per_class"]["a"] == 1.0 and result["per_class"]["b"] == 0.0
    thresholds = tune_thresholds(probs, truth)
    assert thresholds[1] <= 0.3
    full = evaluate_multilabel(probs, truth, ["a", "b"])
    assert full["score"] == 0.5 and full["mean_f1_tuned"] == 1.0
    # row 2 predicts a (0.7, truth 0): a false positive, F1(a) = 2*2 / (2*2 + 1) = 0.8, unless the mask hides it:
    # then F1(a) = 2*2 / (2*2) = 1. b predicts nothing >= 0.5: F1(b) = 0 either way.
    probs[2, 0] = 0.7
    assert multilabel_f1(probs, truth, ["a", "b"])["mean"] == pytest.approx(0.4)
    masked = multilabel_f1(probs, truth, ["a", "b"], mask=np.array([[1, 1], [1, 1], [0, 1], [1, 1]]))
    assert masked["per_class"] == {"a": 1.0, "b": 0.0} and masked["mean"] == 0.5


def test_an_fp16_overflow_step_is_no_update(tmp_path):
    """When the GradScaler finds inf gradients it skips the optimizer step: the weights, the update counter
    and the schedule stay, and train_step says no update happened (the engine updates the EMA only then)."""
    accelerator = make_accelerator(tmp_path, "fp32", grad_accum=1)
    # Accelerate makes no GradScaler on a CPU. A real one whose first scale (2**127) overflows float32 once,
    # as fp16 gradients overflow on a GPU; it then backs off to 2**27 and the next step goes through.
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127, backoff_factor=2.0 ** -100)
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    schedule = restart_schedule(optimizer, updates_per_epoch=4, epochs=1, warmup_epochs=0.5, restart_epochs=1,
                                min_lr=1e-6)
    progress = runs.Progress()
    monitor = LossMonitor(accelerator, tmp_path, "test", keep_checkpoints=1)
    x, y = torch.randn(8, 4), 100 * torch.randn(8, 2)  # a loss of ~1e4: times 2**127 it is inf

    def step() -> bool:
        return train_step(accelerator, model, optimizer, schedule, monitor, progress,
                          lambda: nn.functional.mse_loss(model(x), y), None, torch.zeros((), dtype=torch.long), 8)

    weights, lr = model.weight.detach().clone(), optimizer.param_groups[0]["lr"]
    assert not step()
    assert accelerator.optimizer_step_was_skipped and accelerator.scaler.get_scale() == 2.0 ** 27
    assert torch.equal(model.weight, weights) and optimizer.param_groups[0]["lr"] == lr
    assert (progress.update, progress.images, progress.batch_in_epoch) == (0, 0, 1)
    assert step()
    assert not torch.equal(model.weight, weights) and optimizer.param_groups[0]["lr"] > lr
    assert (progress.update, progress.images, progress.batch_in_epoch) == (1, 8, 2)
