"""What a run leaves for people: metrics.jsonl, TensorBoard events, plot.png, report.json and
the parameter summary. Only rank 0 writes; `metrics.jsonl` is the source of truth, so a
resumed run drops the lines past its checkpoint and the plot always shows one clean history.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

METRIC_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1", "lr")


class Reporter:
    def __init__(self, directory: Path, enabled: bool, completed_epochs: int):
        self.directory, self.enabled = directory, enabled
        self.metrics_path, self.plot_path = directory / "metrics.jsonl", directory / "plot.png"
        self.report_path = directory / "report.json"
        self._writer = None
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
            kept = [m for m in self.history() if m["epoch"] <= completed_epochs]
            self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))

    def history(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def log_epoch(self, metrics: dict) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        writer = self._tensorboard()
        for key in METRIC_KEYS:
            writer.add_scalar(key, metrics[key], metrics["epoch"])
        writer.flush()
        plot(self.history(), self.plot_path)

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
        self.report_path.write_text(json.dumps(report, indent=2))
        if self._writer is not None:
            self._writer.close()

    def _tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.directory / "tensorboard"))
        return self._writer


def plot(history: list[dict], path: Path) -> None:
    """Train/validation loss and accuracy per epoch; dotted lines where a new phase starts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, [m[f"train_{key}"] for m in history], "o-", label=f"train {key}")
        ax.plot(epochs, [m[f"val_{key}"] for m in history], "o-", label=f"validation {key}")
        for before, after in zip(history, history[1:]):
            if after["phase"] != before["phase"]:
                ax.axvline(before["epoch"] + 0.5, linestyle=":", color="grey")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
