"""Stopping and resuming from ckpt/last.pt continues the same loss curve as an uninterrupted run."""

import pytest
import torch
from fixtures.training import read_log, stage1_dict, stage1_vq, stage2_dict, train

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:stage 2 runs on a randomly initialised audio encoder")]

COMPARED = ("lr", "grad_norm", "loss", "motion_l1", "commit", "codebook", "dead_codes", "ce", "acc")


@pytest.mark.parametrize("stage,quantizer", [(1, "bsq"), (1, "vq"), (2, "vq")])
def test_resume_continues_the_same_loss_curve(stage, quantizer, tmp_path):
    if stage == 1:  # VQ: a dead-code refresh (every 10 steps) falls after the restart
        make = lambda d: stage1_dict(d, quantizer=quantizer, steps=12, quant={"refresh_every": 10})
    else:
        make = lambda d: stage2_dict(d, stage1_vq().export_dir, steps=8)
    total = make(tmp_path)["optim"]["max_steps"]
    train(make(tmp_path / "full"), resume=False)
    part = train(make(tmp_path / "part"), resume=False, stop_at=total // 2)
    assert part.step == total // 2 and (tmp_path / "part" / "ckpt" / "last.pt").is_file()
    rest = train(make(tmp_path / "part"), resume=True)
    assert rest.step == total and [h["step"] for h in rest.history] == list(range(total // 2 + 1, total + 1))
    log_full, log_part = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    assert [r["step"] for r in log_part] == [str(s) for s in range(1, total + 1)]
    for a, b in zip(log_full, log_part):
        for key in COMPARED:
            if a.get(key):
                assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-6, abs=1e-9), (a["step"], key)
    ea = torch.load(next((tmp_path / "full" / "export").glob("*.pt")), weights_only=True)
    eb = torch.load(next((tmp_path / "part" / "export").glob("*.pt")), weights_only=True)
    for key in ea:
        torch.testing.assert_close(eb[key], ea[key], atol=1e-6, rtol=0, msg=key)


def test_fine_tuning_starts_from_an_existing_checkpoint(tmp_path):
    """init_from: a studio's fine-tuning run begins where a trained (here: the quick tiny) model left off."""
    from fixtures.training import stage2_quick

    base = stage2_quick()
    cfg = stage2_dict(tmp_path / "ft", stage1_vq().export_dir, steps=2, optim={"lr": 1e-6})
    fresh = train(cfg, resume=False)
    tuned = train({**cfg, "init_from": str(base.export_dir), "run": {**cfg["run"], "run_dir": str(tmp_path / "t")}},
                  resume=False)
    assert tuned.history[0]["ce"] < fresh.history[0]["ce"]
