"""Is the run learning? A check at the end of each epoch, so a run that cannot learn says so at once instead
of training to the end in silence.

After the first epoch that ends past the learning-rate warm-up, the mean training loss of its last steps
is compared with that of its first steps: clearly higher (by half, and above ``log K``) with a training
accuracy near chance means the run diverged and stops (``train.learning_check=stop``) or warns (``warn``);
not lower means it warns, unless the epoch is too short to compare (fewer than two steps at each end: one batch
against another is noise) or the training accuracy is already twice chance or more. At later epochs, a
training accuracy near chance warns. Every message names the likely cause: the learning rate for the method
(with the method's own advice), too high, or too low for the new layers to move.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Optional

import torch

from ..errors import TrainingError
from .distributed import DistInfo, all_reduce_sum


MIN_WINDOW = 2  # steps averaged at each end of the epoch before a flat loss is judged (one batch is noise)


class LearningCheck:
    """Tracks the first and last steps' loss and accuracy of each epoch; :meth:`end_of_epoch` judges them.

    Args:
        num_classes: K (chance is 1/K).
        policy: ``stop``, ``warn`` or ``ignore``.
        lr_text: How the run's learning rate reads in a message (``train.lr=0.02, new layers x10``).
        hint: The method's advice on learning rates ('' when it has none).
        steps_per_epoch: Optimizer steps in an epoch (sets how many steps count as 'first' and 'last').
    """

    def __init__(self, num_classes: int, policy: str, lr_text: str, hint: str, steps_per_epoch: int,
                 warmup_steps: int = 0):
        self.k, self.policy, self.lr_text, self.hint = num_classes, policy, lr_text, hint
        self.warmup_steps = warmup_steps
        self.judged = False  # the first epoch past the warm-up has been judged
        self.n = max(1, min(10, steps_per_epoch // 4))
        self.first: list[torch.Tensor] = []
        self.last: deque = deque(maxlen=self.n)
        self.warned: set[str] = set()
        self.partial = False

    def start_epoch(self, partial: bool = False) -> None:
        """``partial``: the epoch resumes in its middle, so its first steps are not the epoch's: not judged."""
        self.first, self.last = [], deque(maxlen=self.n)
        self.partial = partial

    def add(self, loss: torch.Tensor, accuracy: Optional[torch.Tensor]) -> None:
        """One optimizer step's loss and training accuracy (tensors; no synchronization here)."""
        acc = accuracy if accuracy is not None else torch.full_like(loss, float("nan"))
        pair = torch.stack([loss.detach().float(), acc.detach().float()])
        if len(self.first) < self.n:
            self.first.append(pair)
        self.last.append(pair)

    def end_of_epoch(self, epoch: int, info: DistInfo, step: Optional[int] = None) -> Optional[str]:
        """Judges the epoch that just ended (``epoch`` counts from 1; ``step``: optimizer steps so far); returns
        a warning, raises to stop.

        A collective on every rank, so that all ranks reach the same verdict."""
        if self.policy == "ignore" or not self.first or not self.last or self.partial:
            return None
        if step is not None and step <= self.warmup_steps:  # the rate is still rising: too early to judge
            return None
        first_judged = not self.judged
        self.judged = True
        vec = torch.cat([torch.stack(self.first).mean(0), torch.stack(list(self.last)).mean(0)]).to(info.device)
        first_loss, _, last_loss, acc = (all_reduce_sum(vec, info) / info.world_size).tolist()
        chance = 100.0 / self.k
        near_chance = not math.isnan(acc) and acc <= 1.5 * chance
        clearly_above = not math.isnan(acc) and acc >= 2 * chance  # learning, whatever a few batches' losses say
        hint = f"; {self.hint}" if self.hint else ""
        too_high = f"likely cause: the learning rate ({self.lr_text}) is too high for this method{hint}"
        either = (f"likely cause: the learning rate ({self.lr_text}), too high for this method or too low for its "
                  f"new layers to move (train.head_lr_scale){hint}")
        message = None
        which = "the first epoch" if epoch == 1 else f"epoch {epoch} (the first after the warm-up)"
        if first_judged and last_loss > 1.5 * first_loss and last_loss > math.log(self.k) and near_chance:
            message = (f"the training loss rose from {first_loss:.3g} to {last_loss:.3g} in {which} and the "
                       f"training accuracy is {acc:.1f}% (chance {chance:.1f}%): the run is not learning; {too_high}")
            if self.policy == "stop":
                raise TrainingError(message + " (train.learning_check=warn trains on anyway)")
        elif first_judged and last_loss >= first_loss and len(self.first) >= MIN_WINDOW and not clearly_above:
            message = f"the training loss has not fallen in {which} ({first_loss:.3g} -> {last_loss:.3g}); {either}"
        elif not first_judged and near_chance and "chance" not in self.warned:
            self.warned.add("chance")
            message = (f"after {epoch} epochs the training accuracy is {acc:.1f}%, near chance ({chance:.1f}%); "
                       f"{either}")
        return message
