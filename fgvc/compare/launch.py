"""Training a comparison's rows: one ``fgvc train`` process per run (a torchrun group where ``--launcher`` says so),
several at once where the device has room, and one line per event (a run started, an epoch ended, a trial pruned
or kept, a run finished or failed), never a progress bar.

Without tuning a row is one run. With ``--tune N`` a row is N trials on a validation split carved from the
training set (``data.val_fraction``; the test split is never evaluated: ``eval.test=false``), each judged after
every epoch by the row's Optuna study (a pruned trial is stopped with SIGTERM, which saves and exits), then one
run of the best trial's setting on the whole training set, tested once. Any number of processes, on one machine
or several sharing ``OUT`` (and the storage), can run the same command: each takes the trials and rows that no
other holds (:mod:`.tune`, :mod:`.store`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Optional

from ..report.metrics import read_metrics
from .plan import Comparison, Row, train_arguments
from .store import check_finished, claim, last_validation, read_result, release, result_path, summarize, write_json
from .units import Unit, auto_parallel, describe_params, error_line, settings_of, test_line

TRIAL_SETTINGS = ["eval.test=false", "train.eval_every=1", "train.select=last", "eval.explain_samples=0"]


class Scheduler:
    """Takes units as long as there are free slots and work no other process holds, and follows them."""

    def __init__(self, c: Comparison, plan: list[Row], space_of: Callable[[Row], list], log: Callable[[str], None]):
        self.c, self.plan, self.space_of, self.log = c, [r for r in plan if not r.refused], space_of, log
        self.parallel = c.parallel or auto_parallel(c.device, max(1, len(self.plan)))
        cores = os.cpu_count() or 2
        self.workers, self.threads = max(1, min(8, cores // self.parallel)), max(1, cores // self.parallel)
        self.storage = None
        if c.tune:
            from .tune import check_study, open_storage

            self.storage = open_storage(c)
            for row in self.plan:
                check_study(self.storage, row, c, self.trial_base(row))
        self.running: list[Unit] = []
        self.attempted: set[str] = set()  # rows this process ran: a failed one is not run again until the next call
        self.finished: set[str] = set()  # rows found finished (by any process)

    # -- what to run ------------------------------------------------------------------------------------

    def trial_base(self, row: Row) -> list[str]:
        """The settings every trial of the row shares (its drawn setting comes on top)."""
        return train_arguments(self.c, row, self.workers) + [f"data.val_fraction={self.c.val_fraction}"] + \
            TRIAL_SETTINGS

    def planned(self, row: Row) -> list[str]:
        """The settings of the row's tested run (with the chosen setting, when tuned)."""
        items = train_arguments(self.c, row, self.workers)
        if not self.c.tune:
            return items
        from .tune import best_params

        params = best_params(self.storage, row, self.c) or {}
        return items + settings_of(params) + ["data.val_fraction=0"]

    def done(self, row: Row) -> bool:
        if self.c.tune:
            from .tune import finished

            if not finished(self.storage, row, self.c):
                return False
        return check_finished(self.c.out, row, self.planned(row))

    def settled(self, row: Row) -> bool:
        """Finished, or failed in this process. A finished row stays finished: it is read from OUT once, not on
        every pass of the loop."""
        if row.key in self.attempted or row.key in self.finished:
            return True
        if self.done(row):
            self.finished.add(row.key)
            return True
        return False

    def next_unit(self) -> Optional[Unit]:
        """The first work in row order that this process may take now (None: none)."""
        busy = {u.row.key for u in self.running if u.trial is None}
        for row in self.plan:
            if row.key in busy or self.settled(row):
                continue
            if self.c.tune:
                from .tune import finished, take_trial

                if not finished(self.storage, row, self.c):
                    base = self.trial_base(row)
                    trial, continued = take_trial(self.storage, row, self.c, self.space_of(row),
                                                  self.c.storage is not None, base)
                    if trial is None:
                        continue  # its remaining trials run elsewhere
                    run_dir = self.c.out / "trials" / row.key / f"trial-{trial.number}"
                    arguments = base + settings_of(trial.params)
                    label = f"{row.describe()}, trial {trial.number + 1} of {self.c.tune}"
                    self.log(f"{'continuing' if continued else 'started'} {label}: {describe_params(trial.params)}")
                    return Unit(row, run_dir, arguments, label, trial)
            if claim(self.c.out, row):
                self.attempted.add(row.key)
                label = row.describe()
                self.log(f"started {label}" + (" with its best trial's setting on the whole training set"
                                                if self.c.tune else ""))
                return Unit(row, self.c.out / "runs" / row.key, self.planned(row), label)
        return None

    # -- processes ----------------------------------------------------------------------------------------

    def start(self, unit: Unit) -> None:
        log_path = self.c.out / "logs" / (f"{unit.row.key}.log" if unit.trial is None else
                                          f"{unit.row.key}/trial-{unit.trial.number}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        unit.log = open(log_path, "a")
        head = self.c.launcher or [sys.executable]
        cmd = [*head, "-m", "fgvc", "train", *unit.arguments, f"out={unit.run_dir}", "--quiet", "--json",
               "--resume", "auto"]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        unit.process = subprocess.Popen(cmd, stdout=unit.log, stderr=subprocess.STDOUT, text=True, env=env)
        self.running.append(unit)

    def follow(self, unit: Unit) -> None:
        """Says each new epoch of a unit; reports a trial's validation accuracy and stops it when pruned."""
        epochs = [r for r in read_metrics(unit.run_dir) if r.get("kind") == "epoch"][unit.seen_epochs:]
        for record in epochs:
            unit.seen_epochs += 1
            val = record.get("val")
            shown = f"validation {val:.2f}%" if val is not None else \
                f"loss {record['loss']:.3f}" if record.get("loss") is not None else "done"
            self.log(f"{unit.label}: epoch {record['epoch']} of {record['epochs']}, {shown}")
            if unit.trial is not None and val is not None and not unit.pruned:
                unit.trial.report(val, int(record["epoch"]))
                if unit.trial.should_prune():
                    unit.pruned = True
                    self.log(f"{unit.label}: pruned after epoch {record['epoch']} (validation {val:.2f}%)")
                    unit.process.send_signal(signal.SIGTERM)  # saves at the next step and exits

    def finish(self, unit: Unit) -> None:
        unit.log.close()
        seconds = time.time() - unit.started
        code = unit.process.returncode
        if unit.trial is not None:
            self.finish_trial(unit, code, seconds)
        else:
            self.finish_run(unit, code, seconds)

    def finish_trial(self, unit: Unit, code: int, seconds: float) -> None:
        from optuna.trial import TrialState

        trial = unit.trial
        trial.set_user_attr("seconds", float(trial.user_attrs.get("seconds", 0.0)) + seconds)
        values = last_validation(unit.run_dir)
        for epoch, value in sorted(values.items()):
            trial.report(value, epoch)  # what an earlier process of this trial did not report (repeats ignored)
        study = trial.study
        if unit.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif code == 0 and values:
            value = values[max(values)]
            study.tell(trial, value)
            self.log(f"{unit.label}: kept, validation {value:.2f}% ({seconds / 60:.1f} min)")
        else:
            study.tell(trial, state=TrialState.FAIL)
            self.log(f"{unit.label} failed after {seconds / 60:.1f} min: {error_line(unit)}")

    def finish_run(self, unit: Unit, code: int, seconds: float) -> None:
        row = unit.row
        old = read_result(self.c.out, row) or {}
        minutes = old.get("minutes", 0.0) + seconds / 60 if old.get("exit") != 0 else seconds / 60
        result: dict[str, Any] = {"name": row.name, "key": row.key, "backbone": row.backbone,
                                  "method": row.spec.method, "mode": row.mode, "exit": code, "minutes": minutes,
                                  "settings": unit.arguments, "run_dir": str(unit.run_dir)}
        test = test_line(unit)
        if code == 0 and test:
            result.update(top1=test["top1"], mean_class_acc=test["mean_class_acc"])
            self.log(f"finished {unit.label}: test top-1 {test['top1']:.2f}% ({minutes:.1f} min)")
        else:
            result["error"], result["exit"] = error_line(unit), code or 1
            self.log(f"{unit.label} failed after {minutes:.1f} min: {result['error']}")
        result.update(summarize(unit.run_dir))
        write_json(result_path(self.c.out, row), result)
        release(self.c.out, row)

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self) -> None:
        waiting = False
        while True:
            while len(self.running) < self.parallel:
                unit = self.next_unit()
                if unit is None:
                    break
                self.start(unit)
            if not self.running:
                if all(self.settled(row) for row in self.plan):
                    return
                if not waiting:
                    self.log("waiting for the runs that other processes hold")
                    waiting = True
                time.sleep(5)
                continue
            waiting = False
            time.sleep(1)
            for unit in list(self.running):
                self.follow(unit)
                if unit.process.poll() is not None:
                    self.follow(unit)
                    self.running.remove(unit)
                    self.finish(unit)

    def stop(self) -> None:
        """Stops every running process (each saves at its next step)."""
        for unit in self.running:
            if unit.process.poll() is None:
                unit.process.send_signal(signal.SIGTERM)
        for unit in self.running:
            unit.process.wait()


def train_rows(c: Comparison, plan: list[Row], space_of: Callable[[Row], list], log: Callable[[str], None] = print
               ) -> None:
    """Trains every row of ``plan`` that is not finished (its trials first, when tuning); returns when every row is
    finished, whoever trained it. A Ctrl-C or SIGTERM stops the runs, each saving where it was."""
    c.out.mkdir(parents=True, exist_ok=True)
    scheduler = Scheduler(c, plan, space_of, log)
    if all(scheduler.done(row) for row in scheduler.plan):
        log(f"every run is finished ({len(scheduler.plan)}); nothing to train")
        return
    def stop_on_sigterm(signum, frame):  # as Ctrl-C: the runs are stopped (and save), not orphaned
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        scheduler.run()
    except BaseException:
        scheduler.stop()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["Scheduler", "train_rows"]
