"""What a run leaves for people: metrics.jsonl, TensorBoard events, plot.png, report.json, the
parameter summary and the termination message. Only rank 0 writes the files, each replaced
atomically (a kill never leaves half a line); `metrics.jsonl` is the source of truth, so a
resumed run drops the lines past its checkpoint and the plot always shows one clean history.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rich.console import Console
from rich.table import Table

from graft.fsutil import atomic_write
from graft.spec.contracts import MESSAGE_LIMIT, TERMINATION_LOG, TERMINATION_LOG_ENV

METRIC_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")


class Reporter:
    def __init__(self, directory: Path, enabled: bool, completed_epochs: int, job_name: str):
        self.directory, self.enabled, self.job_name = directory, enabled, job_name
        self.metrics_path, self.plot_path = directory / "metrics.jsonl", directory / "plot.png"
        self.report_path = directory / "report.json"
        self._writer = None
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
            self._write_history([m for m in self.history() if m["epoch"] <= completed_epochs])

    def history(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def log_epoch(self, metrics: dict) -> None:
        if not self.enabled:
            return
        self._write_history([*self.history(), metrics])
        writer = self._tensorboard()
        for key in METRIC_KEYS:
            writer.add_scalar(key, metrics[key], metrics["epoch"])
        writer.flush()
        plot(self.history(), self.plot_path, self.job_name)

    def param_summary(self, phase: str, summary: dict) -> None:
        if not self.enabled:
            return
        table = Table(title=f"parameters, phase '{phase}'")
        for column in ("total", "trainable", "frozen"):
            table.add_column(column, justify="right")
        table.add_row(*(f"{summary[c]:,}" for c in ("total", "trainable", "frozen")))
        Console().print(table)

    def final(self, report: dict) -> None:
        if not self.enabled:
            return
        atomic_write(self.report_path, json.dumps(report, indent=2))
        if self._writer is not None:
            self._writer.close()

    def _write_history(self, history: list[dict]) -> None:
        atomic_write(self.metrics_path, "".join(json.dumps(m) + "\n" for m in history))

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.directory / "tensorboard"))
        return self._writer


def plot(history: list[dict], path: Path, job_name: str) -> None:
    """Train/validation loss and accuracy per epoch (whole epochs on the axis), each phase
    shaded and named, under the job's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [m["epoch"] for m in history]
    phases: list[tuple[str, int, int]] = []  # (name, first epoch, last epoch), in order
    for m in history:
        if phases and phases[-1][0] == m["phase"]:
            phases[-1] = (m["phase"], phases[-1][1], m["epoch"])
        else:
            phases.append((m["phase"], m["epoch"], m["epoch"]))
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4.4))
    fig.suptitle(f"{job_name}: training history")
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        for index, (phase, first, last) in enumerate(phases):
            ax.axvspan(first - 0.5, last + 0.5, color="grey", alpha=0.12 if index % 2 == 0 else 0.04, lw=0)
            ax.text((first + last) / 2, 1.01, phase, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=8, color="dimgrey")
        ax.plot(epochs, [m[f"train_{key}"] for m in history], "o-", label=f"train {key}")
        ax.plot(epochs, [m[f"val_{key}"] for m in history], "o-", label=f"validation {key}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)
        ax.set_xlabel("epoch")
        ax.set_title(key, pad=16)
        ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def write_termination_message(message: str) -> None:
    """Kubernetes shows this file's content in the pod status when the container ends: the
    final summary (`graft.spec.contracts.termination_message`) or a failure for people,
    trimmed here to the limit (longer, Kubernetes would cut it)."""
    data = message.encode()
    if len(data) >= MESSAGE_LIMIT:
        data = data[: MESSAGE_LIMIT - 4].decode(errors="ignore").encode() + b"..."
    override = os.environ.get(TERMINATION_LOG_ENV)
    if override:
        atomic_write(override, data)
    elif os.access(TERMINATION_LOG, os.W_OK):  # a file the kubelet mounts: written in place, not renamed over
        Path(TERMINATION_LOG).write_bytes(data)
