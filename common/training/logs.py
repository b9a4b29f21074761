"""Per-epoch records of a training run: `log.csv` and the one-line epoch report, shared by both trainers.

The CSV has one row per completed epoch (1-based `epoch`); columns are the keys of the first row
followed by any later new key. It is rewritten atomically after every epoch, so it never holds a
half-written row; a resumed run keeps the rows of the epochs it did not redo.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from common.atomic import atomic_write_text


class CSVLog:
    """log.csv of a run. `keep_epochs`: on resume, keep existing rows with epoch <= this; None starts afresh."""

    def __init__(self, path: str | os.PathLike, keep_epochs: int | None = None):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.fields: list[str] = []
        if keep_epochs is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                self.fields = list(reader.fieldnames or [])
                self.rows = [r for r in reader if r.get("epoch", "").isdigit() and int(r["epoch"]) <= keep_epochs]

    def append(self, row: dict) -> None:
        self.rows.append(dict(row))
        self.fields += [k for k in row if k not in self.fields]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, restval="", lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.path, buf.getvalue())


def _fmt(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def epoch_row(epoch: int, lr: float, train: dict, val_top1: list[float] | None, val_loss: float | None) -> dict:
    """The log.csv row of one epoch: train metrics, then per-exit calibration top-1 (fractions)."""
    row = {"epoch": epoch, "lr": lr, "train_loss": train["loss"], "img_per_s": train["img_per_s"],
           "epoch_seconds": train["seconds"], "steps": train["steps"]}
    if val_loss is not None:
        row["val_loss"] = val_loss
    for k, acc in enumerate(val_top1 or []):
        row[f"val_top1_exit{k + 1}"] = acc
    return row


def format_epoch_line(epoch: int, num_epochs: int, lr: float, train: dict, val_top1: list[float] | None) -> str:
    """'epoch 3/30  loss 2.1340  lr 1.90e-03  812 img/s  4.1 s  | calib top-1 % 45.3 / 60.1 / 70.2'."""
    line = (f"epoch {epoch}/{num_epochs}  loss {train['loss']:.4f}  lr {lr:.2e}  {train['img_per_s']:.0f} img/s  "
            f"{train['seconds']:.1f} s")
    if val_top1:
        line += "  | calib top-1 % " + " / ".join(f"{100 * a:.1f}" for a in val_top1)
    return line
