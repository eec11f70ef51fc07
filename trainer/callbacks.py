"""Trainer callbacks: the loss log, a rich progress bar, and a graceful Ctrl-C."""

from __future__ import annotations

import json
import signal
import threading

from transformers import TrainerCallback

from medchat.core.runs import RunDir


class LossLogCallback(TrainerCallback):
    """Appends one JSON line per logging step to <run>/loss_log.jsonl (main process only)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        entry = None
        if "loss" in logs:
            entry = {"step": state.global_step, "epoch": round(float(state.epoch or 0), 4),
                     "train_loss": round(float(logs["loss"]), 5),
                     "learning_rate": logs.get("learning_rate"),
                     "tokens_per_s": logs.get("tokens_per_s"),
                     "grad_norm": _num(logs.get("grad_norm"))}
        elif "eval_loss" in logs:
            entry = {"step": state.global_step, "epoch": round(float(state.epoch or 0), 4),
                     "eval_loss": round(float(logs["eval_loss"]), 5)}
        if entry is not None:
            with self.run.loss_log.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


def _num(value):
    try:
        return round(float(value), 5)
    except (TypeError, ValueError):
        return None


class InterruptCallback(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop (status 'interrupted').
    Second Ctrl-C: abort at once (KeyboardInterrupt)."""

    def __init__(self, state: dict, console=None):
        self.state = state
        self.console = console
        self._previous = None

    def _handler(self, signum, frame):
        if self.state["interrupted"]:
            raise KeyboardInterrupt
        self.state["interrupted"] = True
        if self.console is not None:
            self.console.print("\n[yellow]Ctrl-C: stopping after this step and saving a checkpoint "
                               "(press Ctrl-C again to abort without saving).[/]")

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.state["interrupted"]:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class RichProgressCallback(TrainerCallback):
    """A live bar: step, epoch, loss, learning rate, tokens/s, elapsed and ETA."""

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None
        self.fields = {"epoch": 0.0, "loss": float("nan"), "eval": "-", "lr": 0.0, "tps": 0.0}

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(
            BarColumn(bar_width=16),
            MofNCompleteColumn(),
            TextColumn("ep {task.fields[epoch]:.2f}"),
            TextColumn("loss [bold]{task.fields[loss]:.3f}[/]"),
            TextColumn("eval {task.fields[eval]}"),
            TextColumn("lr {task.fields[lr]:.1e}"),
            TextColumn("{task.fields[tps]:.0f} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           **self.fields)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.fields["epoch"] = float(state.epoch or 0)
            self.progress.update(self.task, completed=state.global_step, **self.fields)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.fields["loss"] = float(logs["loss"])
            self.fields["lr"] = float(logs.get("learning_rate") or 0.0)
            if logs.get("tokens_per_s") is not None:
                self.fields["tps"] = float(logs["tokens_per_s"])
        if "eval_loss" in logs:
            self.fields["eval"] = f"{float(logs['eval_loss']):.3f}"
        self.progress.update(self.task, **self.fields)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, **self.fields)
            self.progress.stop()
            self.progress = None
