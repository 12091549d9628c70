"""A run that is not learning says so: diverging stops after the first epoch with the likely cause; a loss
that does not fall, or a training accuracy near chance, warns. And every smoke recipe does learn."""

from __future__ import annotations

import json

import pytest
import torch

from fgvc.cli import main
from fgvc.engine.distributed import DistInfo
from fgvc.engine.health import LearningCheck
from fgvc.errors import TrainingError
from fgvc.methods import list_methods



def check(losses, accs, epoch=1, policy="stop", k=10, warmup=0, step=None, judged=False):
    c = LearningCheck(k, policy, "train.lr=0.1, new layers x10", "use a smaller rate", steps_per_epoch=8,
                      warmup_steps=warmup)
    c.judged = judged
    c.start_epoch()
    for loss, acc in zip(losses, accs):
        c.add(torch.tensor(loss), torch.tensor(acc))
    return c.end_of_epoch(epoch, DistInfo(), step)


def test_a_diverging_first_epoch_stops_with_its_likely_cause():
    with pytest.raises(TrainingError, match=r"rose from 2.3 to 9.* not learning; likely cause: the learning rate "
                                            r"\(train.lr=0.1, new layers x10\) is too high for this method; use a"):
        check([2.3, 2.3, 4, 6, 8, 9, 9, 9], [10, 10, 10, 5, 10, 10, 10, 10])
    assert "rose" in check([2.3, 2.3, 4, 6, 8, 9, 9, 9], [10] * 8, policy="warn")
    assert check([2.3, 2.3, 4, 6, 8, 9, 9, 9], [10] * 8, policy="ignore") is None


def test_a_flat_loss_or_chance_accuracy_warns_and_a_learning_run_is_quiet():
    assert "has not fallen in the first epoch" in check([2.3] * 8, [10] * 8)
    assert "near chance" in check([2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6], [10] * 8, epoch=2, judged=True)
    # during the warm-up nothing is judged; the first epoch past it is judged as the first
    assert check([2.3] * 8, [10] * 8, warmup=20, step=8) is None
    assert "has not fallen in epoch 3 (the first after the warm-up)" in check([2.3] * 8, [10] * 8, epoch=3,
                                                                              warmup=20, step=24)
    assert check([2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6], [10, 20, 30, 40, 50, 50, 60, 60]) is None


def test_wsdan_at_a_plain_fine_tuning_rate_stops_in_one_line(capsys, tmp_path):
    """The first real-data run: WS-DAN at lr 0.02 sat at a loss of 11-14 for the whole run, silently."""
    code = main(["train", "smoke/wsdan", "train.lr=0.05", f"out={tmp_path / 'w'}", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert "not learning" in err[0] and "100x its normalized feature" in err[0], err


@pytest.mark.parametrize("method", list_methods())
def test_every_smoke_recipe_learns(method, smoke_run):
    """The smoke recipes' training loss falls: the last logged window is below the first."""
    records = [json.loads(x) for x in (smoke_run(method) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


def test_an_epoch_resumed_in_its_middle_is_not_judged():
    from fgvc.engine.health import LearningCheck

    check = LearningCheck(4, "stop", "train.lr=1", "", steps_per_epoch=8)
    info = DistInfo()
    for partial, expect_raise in ((True, False), (False, True)):
        check.start_epoch(partial=partial)
        for i in range(8):  # a rising loss at chance: stops when judged
            check.add(torch.tensor(1.0 + i), torch.tensor(25.0))
        if expect_raise:
            with pytest.raises(TrainingError):
                check.end_of_epoch(2, info, step=16)
        else:
            assert check.end_of_epoch(1, info, step=8) is None


class _Dispositions(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import signal

        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return torch.tensor([signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, signal.SIGTERM in blocked])


def test_workers_start_deaf_then_ignore_sigterm_and_the_main_process_keeps_its_mask():
    import signal

    from fgvc.data.dataset import leave_signals_to_the_main_process, start_workers

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    loader = torch.utils.data.DataLoader(_Dispositions(), batch_size=1, num_workers=1,
                                         worker_init_fn=leave_signals_to_the_main_process)
    rows = torch.cat(list(start_workers(loader)))
    assert rows[:, 0].all() and not rows[:, 1].any()  # ignored, and no longer blocked, in the worker
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_a_tiny_epoch_compares_no_single_batches_and_a_learning_run_is_not_warned():
    """A 20-step run on 17 Flowers (4 steps an epoch) warned '1.62 -> 2.08' from one batch against one, at 54.7%
    training accuracy against 20% chance."""
    c = LearningCheck(5, "stop", "train.lr=0.01", "", steps_per_epoch=4)
    c.start_epoch()
    for loss, acc in ((1.62, 50.0), (1.9, 52.0), (2.0, 55.0), (2.08, 54.7)):
        c.add(torch.tensor(loss), torch.tensor(acc))
    assert c.end_of_epoch(1, DistInfo(), 4) is None
    # longer epochs still warn on a flat loss at chance, and not at twice chance
    assert "has not fallen" in check([2.3] * 8, [10] * 8)
    assert check([2.3] * 8, [25] * 8) is None
