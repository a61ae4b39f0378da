"""CMAC's targets from a momentum copy of the model (``loss.target_momentum``)."""

from __future__ import annotations

import pytest
import torch

from cmac_core.config import ConfigError, preset
from cmac_core.models import build
from cmac_core.targets import MomentumTeacher
from cmac_core.task import PretrainTask


def _task(momentum: float) -> PretrainTask:
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = build("cmac", cfg.model)
    return PretrainTask(model, cfg.replace("loss", target_momentum=momentum).loss)


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 4, 64, 64, generator=g), torch.randn(4, 1, 128, 50, generator=g)


def test_copy_starts_as_the_student_then_moves_a_step_of_one_minus_m():
    student = torch.nn.Linear(3, 2)
    teacher = MomentumTeacher(0.9)
    copy = teacher.update(student)
    assert copy is not student and torch.equal(copy.weight, student.weight)
    assert not copy.weight.requires_grad
    before = copy.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    teacher.update(student)
    assert torch.allclose(copy.weight, before + 0.1, atol=1e-6)


def test_targets_come_from_the_copy():
    video, spec = _batch()
    plain, slow = _task(0.0), _task(0.99)
    assert plain.teacher is None
    # The first step's copy is the student itself: the same targets as the paper's rule.
    a, b = plain(video, spec, step=10_000), slow(video, spec, step=10_000)
    assert b["att_v"].item() == pytest.approx(a["att_v"].item(), rel=1e-5)
    assert b["att_a"].item() == pytest.approx(a["att_a"].item(), rel=1e-5)
    # Move the copy alone: the targets follow it, the student's own terms do not.
    slow.eval()  # eval: no momentum step, so the copy stays as set below
    ref = slow(video, spec, step=10_000)
    with torch.no_grad():
        for p in slow.teacher.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    c = slow(video, spec, step=10_000)
    assert c["nce"].item() == pytest.approx(ref["nce"].item(), rel=1e-5)
    assert abs(c["att_v"].item() - ref["att_v"].item()) > 1e-3


def test_targets_get_no_gradient_and_the_copy_is_not_a_parameter():
    task = _task(0.99)
    video, spec = _batch()
    out = task(video, spec, step=10_000)
    out["loss"].backward()
    names = {n for n, _ in task.named_parameters()}
    assert names == {n for n, _ in task.model.named_parameters(prefix="model")}
    assert all(p.grad is None for p in task.teacher.model.parameters())


def test_avid_ignores_the_momentum_and_bad_values_are_refused():
    cfg = preset("tiny")
    avid = PretrainTask(
        build("cmac", cfg.model), cfg.replace("loss", method="avid", target_momentum=0.9).loss
    )
    assert avid.teacher is None
    with pytest.raises(ConfigError, match="target_momentum"):
        cfg.replace("loss", target_momentum=1.0)
