"""pact train's learning-rate schedule = transformers' (which TRL, the HF Trainer and the baselines' code use)."""
import pytest
import torch

from pact.training.schedule import hf_scheduler_type, lr_factor, lr_lambda


def transformers_factors(name: str, warmup: int, total: int) -> list[float]:
    from transformers import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])  # the rate this optimizer step runs at
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_factors_equal_transformers(schedule, warmup):
    total = 10
    ours = [lr_factor(schedule, warmup, total, s) for s in range(total)]
    assert ours == pytest.approx(transformers_factors(hf_scheduler_type(schedule, warmup), warmup, total), abs=1e-12)
    if warmup:
        assert ours[0] == 0.0 and ours[warmup] == 1.0  # step 0 at lr 0, full rate once warmed up


def test_by_hand_and_through_lambda_lr():
    # W = 2, T = 6: warm-up 0, 1/2; linear then 1, 3/4, 1/2, 1/4
    assert [lr_factor("linear", 2, 6, s) for s in range(6)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", 0, 4))
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2e-3, 2e-3 * (0.5 + 0.5 * 2 ** -0.5), 1e-3, 2e-3 * (0.5 - 0.5 * 2 ** -0.5)])


def test_unknown_schedule_is_refused_before_the_first_step():
    with pytest.raises(ValueError, match="lr_scheduler='step'"):
        lr_lambda("step", 0, 10)
    with pytest.raises(ValueError, match="lr_scheduler='step'"):
        hf_scheduler_type("step", 3)
