"""Tuning every row the same way: one Optuna study per row, in one storage that several machines may share.

Each study draws its trials with Optuna's TPE sampler (seeded) over the row's recipe's space (:mod:`.space`) and
judges them by their validation accuracy after every epoch with Optuna's successive-halving pruner; nothing of the
search or the pruning is fgvc's own. The storage is Optuna's journal file in ``OUT/study.journal`` by default (no
server to start; on a shared file system every node of a cluster can use it) or any storage URL Optuna takes
(``--storage sqlite:///...``, ``postgresql://...``). A trial is asked from the storage, which numbers it: two
processes never get the same trial. A trial whose process died on this machine (its pid is gone) is taken over and
continues from its run folder's checkpoint; a finished trial is never run again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from typing import Any, Optional

from ..errors import FgvcError
from .plan import Comparison, Row
from .space import Dimension, distributions
from .store import HOST, alive, comparable

JOURNAL = "study.journal"


def open_storage(c: Comparison):
    """The Optuna storage of a comparison.

    Raises:
        FgvcError: A storage URL that cannot be opened, in one line.
    """
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # fgvc says what happens, one line per event
    logging.getLogger("optuna").setLevel(logging.ERROR)
    # a trial continued, or finished, reports the epochs of its log again: Optuna keeps the first and says so
    warnings.filterwarnings("ignore", message="The reported value is ignored because this `step")
    target = c.storage or str(c.out / JOURNAL)
    try:
        if "://" in target:
            return optuna.storages.RDBStorage(target, engine_kwargs={"pool_pre_ping": True})
        return JournalStorage(JournalFileBackend(target, lock_obj=JournalFileOpenLock(target)))
    except Exception as e:  # noqa: BLE001 - drivers raise many kinds; the user needs the cause in one line
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else e.__class__.__name__
        raise FgvcError(f"--storage {target}: cannot open it ({e.__class__.__name__}: {reason})") from None


def study_of(storage, row: Row, c: Comparison, asked: int = 0, shared: bool = False):
    """The row's study (created on first use). Its sampler is seeded by the comparison's seed, the row and the
    trials asked so far, so one machine draws the same trials every time; machines sharing the storage add their
    own name, so they do not draw the same settings at the same moment."""
    import optuna

    node = f"{HOST}:{os.getpid()}" if shared else ""
    seed = int(hashlib.sha256(f"{c.seed}/{row.key}/{asked}/{node}".encode()).hexdigest()[:8], 16)
    return optuna.create_study(study_name=row.key, storage=storage, direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=seed),
                               pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3))


def check_study(storage, row: Row, c: Comparison, base: list[str]) -> None:
    """Refuses to continue a row's study whose trials were run with other settings (another budget, data or
    recipe): its trials would be mixed with this command's.

    Raises:
        FgvcError: The study holds a trial of other settings (nothing of it is changed).
    """
    for t in study_of(storage, row, c).get_trials(deepcopy=False):
        old = t.user_attrs.get("base")
        if old is not None and comparable(old) != comparable(base):
            changed = sorted(set(comparable(base)) ^ set(comparable(old)))
            raise FgvcError(f"the study of '{row.describe()}' holds trials run with other settings "
                            f"({', '.join(changed)}); choose another --out (or --storage)")


def take_trial(storage, row: Row, c: Comparison, dims: list[Dimension], shared: bool, base: list[str]):
    """A trial of the row for this process: an orphaned one of this machine to continue, else a new one while the
    study has fewer than ``c.tune``; None when there is none to take. ``base``: the settings of every trial of the
    row (the trial's own drawn ones apart). Returns ``(trial, continued)``."""
    import optuna
    from optuna.trial import TrialState

    study = study_of(storage, row, c, shared=shared)
    trials = study.get_trials(deepcopy=False)
    for frozen in trials:
        if frozen.state == TrialState.RUNNING and not alive(frozen.user_attrs):
            trial = optuna.trial.Trial(study, frozen._trial_id)  # noqa: SLF001 - Optuna's own way to reopen one
            trial.set_user_attr("host", HOST)
            trial.set_user_attr("pid", os.getpid())
            return trial, True
    taken = [t for t in trials if t.number < c.tune]
    if len(taken) >= c.tune:
        return None, False
    study = study_of(storage, row, c, asked=len(taken), shared=shared)
    trial = study.ask(distributions(dims))
    if trial.number >= c.tune:  # another machine asked at the same moment: this one is one too many
        study.tell(trial, state=TrialState.FAIL)
        return None, False
    trial.set_user_attr("host", HOST)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("base", base)  # the settings every trial of the study shares (check_study)
    return trial, False


def finished(storage, row: Row, c: Comparison) -> bool:
    """Whether all ``c.tune`` trials of the row have ended (completed, pruned, or failed: a failed trial is not
    run again)."""
    from optuna.trial import TrialState

    ended = [t for t in study_of(storage, row, c).get_trials(deepcopy=False)
             if t.state != TrialState.RUNNING and t.number < c.tune]
    return len(ended) >= c.tune


def trials_of(storage, row: Row, c: Comparison) -> list[dict[str, Any]]:
    """The row's trials for the page: number, state, setting, validation accuracy per epoch, value, minutes."""
    out = []
    for t in study_of(storage, row, c).get_trials(deepcopy=False):
        if t.number >= c.tune:
            continue
        out.append({"number": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                    "val_by_epoch": {int(k): v for k, v in sorted(t.intermediate_values.items())},
                    "value": t.value, "minutes": t.user_attrs.get("seconds", 0.0) / 60,
                    "epochs": len(t.intermediate_values)})
    return out


def best_params(storage, row: Row, c: Comparison) -> Optional[dict[str, Any]]:
    """The setting of the row's best completed trial (highest final validation accuracy; the earliest among
    equals), None when no trial completed."""
    done = [t for t in trials_of(storage, row, c) if t["state"] == "complete" and t["value"] is not None]
    if not done:
        return None
    return max(done, key=lambda t: (t["value"], -t["number"]))["params"]




def add_tuning(summary: dict[str, Any], c: Comparison, plan: list[Row], spaces: dict[str, list[Dimension]]) -> None:
    """Puts each tuned row's space, trials, chosen setting and tuning minutes into its record, and the cost of the
    tuning against untuned trials (``summary["tuning_cost"]``: epochs trained of the budget, the pruner's saving)."""
    from ..report.metrics import read_metrics

    if not c.tune:
        return
    storage = open_storage(c)
    by_key = {r["key"]: r for r in summary["rows"]}
    trained = budget = trials = 0
    trial_minutes = 0.0
    for row in plan:
        record = by_key.get(row.key)
        if row.refused or record is None:
            continue
        record["space"] = [d.describe() for d in spaces.get(row.key, [])]
        record["trials"] = trials_of(storage, row, c)
        record["chosen"] = best_params(storage, row, c)
        record["tuning_minutes"] = sum(t["minutes"] for t in record["trials"])
        for t in record["trials"]:
            epochs = [r for r in read_metrics(c.out / "trials" / row.key / f"trial-{t['number']}")
                      if r.get("kind") == "epoch"]
            trained += len(epochs)
            budget += epochs[-1]["epochs"] if epochs else 0
            trials += 1
            trial_minutes += t["minutes"]
    final = sum(r.get("minutes") or 0.0 for r in summary["rows"] if r.get("trials") is not None)
    summary["tuning_cost"] = {"trials": trials, "epochs_trained": trained, "epochs_budget": budget,
                              "saved": 1 - trained / budget if budget else 0.0, "trial_minutes": trial_minutes,
                              "final_minutes": final}


__all__ = ["JOURNAL", "open_storage", "study_of", "check_study", "take_trial", "finished", "trials_of", "best_params",
           "add_tuning"]
