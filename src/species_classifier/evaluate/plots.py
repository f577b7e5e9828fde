"""Report figures, drawn with matplotlib's object-oriented API and saved as PNG bytes.

Figures are built from `matplotlib.figure.Figure` without pyplot, so no GUI backend
or global figure state is involved; `savefig` renders through Agg.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

# Cells are annotated with their value only up to this many classes.
_MAX_ANNOTATED_CLASSES = 20
# Above this many classes the two confusion-matrix panels are stacked instead of side by side.
_MAX_SIDE_BY_SIDE_CLASSES = 8
_DPI = 110


def figure_png(figure: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """Draw counts and row-normalised rates of a confusion matrix side by side."""
    n = len(classes)
    totals = matrix.sum(axis=1)
    rates = np.divide(matrix, totals[:, None], out=np.zeros(matrix.shape), where=totals[:, None] > 0)
    annotated = n <= _MAX_ANNOTATED_CLASSES
    side = max(3.0, 0.55 * n + 1.6)
    if n <= _MAX_SIDE_BY_SIDE_CLASSES:
        figure = Figure(figsize=(2 * side + 3.5, side + 0.8), layout="constrained")
        axes = figure.subplots(1, 2)
    else:
        # Stacked, so a wide pair is not shrunk to the page width until its labels are unreadable.
        figure = Figure(figsize=(side + 3.0, 2 * side + 1.6), layout="constrained")
        axes = figure.subplots(2, 1)
    row_labels = [f"{_short(name)} (n={int(t)})" for name, t in zip(classes, totals)]
    column_labels = [_short(name) for name in classes]

    panels = (
        (axes[0], matrix, "counts", "{:.0f}", max(float(matrix.max()), 1.0)),
        (axes[1], rates, "share of true class (row)", "{:.2f}", 1.0),
    )
    for ax, values, subtitle, fmt, top in panels:
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        ax.set_xticks(range(n), column_labels, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(n), row_labels, fontsize=8)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(subtitle, fontsize=10)
        if annotated:
            for i in range(n):
                for j in range(n):
                    value = values[i, j]
                    color = "white" if value > 0.55 * top else "black"
                    ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=8, color=color)
        else:
            figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.suptitle(title, fontsize=11)
    return figure


def plot_training_curves(metrics: pd.DataFrame, best_epochs: Mapping[int, int]) -> Figure:
    """Draw loss and validation macro F1 against epoch, one colour per fold, best epoch starred.

    `metrics` has the `metrics.csv` columns `fold`, `epoch`, `train_loss`, `val_loss` and
    `val_macro_f1`; missing columns are skipped.
    """
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    loss_ax, f1_ax = figure.subplots(1, 2)
    colors = [f"C{i}" for i in range(10)]
    for position, (fold, rows) in enumerate(metrics.sort_values(["fold", "epoch"]).groupby("fold")):
        color = colors[position % len(colors)]
        epochs = rows["epoch"].to_numpy()
        if "train_loss" in rows:
            loss_ax.plot(epochs, rows["train_loss"], linestyle="--", color=color, alpha=0.8)
        if "val_loss" in rows:
            loss_ax.plot(epochs, rows["val_loss"], color=color, label=f"fold {fold}")
        if "val_macro_f1" in rows:
            f1_ax.plot(epochs, rows["val_macro_f1"], color=color, marker=".", label=f"fold {fold}")
            best = best_epochs.get(int(fold))
            best_rows = rows[rows["epoch"] == best]
            if not best_rows.empty:
                f1_ax.plot([best], [best_rows["val_macro_f1"].iloc[0]], marker="*", markersize=14,
                           color=color, markeredgecolor="black")
                if "val_loss" in rows:
                    loss_ax.plot([best], [best_rows["val_loss"].iloc[0]], marker="*", markersize=12,
                                 color=color, markeredgecolor="black")

    loss_ax.set_title("loss (solid: validation, dashed: training)", fontsize=10)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy")
    f1_ax.set_title("validation macro F1 (★ best epoch, kept)", fontsize=10)
    f1_ax.set_xlabel("epoch")
    f1_ax.set_ylabel("macro F1")
    f1_ax.set_ylim(0, 1.02)
    for ax in (loss_ax, f1_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return figure


def plot_per_class(per_class: pd.DataFrame) -> Figure:
    """Draw horizontal precision, recall and F1 bars per class, in class order from the top."""
    n = len(per_class)
    figure = Figure(figsize=(8, max(2.5, 0.5 * n + 1.2)), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(n)
    height = 0.26
    for offset, column, color in ((-height, "precision", "C0"), (0.0, "recall", "C1"), (height, "f1", "C2")):
        values = per_class[column].to_numpy(dtype=float)
        ax.barh(positions + offset, np.nan_to_num(values), height=height, color=color, label=column)
        for y, value in zip(positions + offset, values):
            text = "n/a" if math.isnan(value) else f"{value:.2f}"
            ax.text(min(np.nan_to_num(value), 0.9) + 0.01, y, text, va="center", fontsize=7)
    labels = [f"{_short(name)} (n={support})" for name, support in zip(per_class["class"], per_class["support"])]
    ax.set_yticks(positions, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("score")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return figure


def plot_reliability(
    bins_before: pd.DataFrame, bins_after: pd.DataFrame, ece_before: float, ece_after: float, temperature: float
) -> Figure:
    """Draw reliability diagrams before and after temperature scaling."""
    figure = Figure(figsize=(10, 4.2), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    panels = (
        (axes[0], bins_before, f"before (T = 1): ECE {ece_before:.3f}"),
        (axes[1], bins_after, f"after (T = {temperature:.2f}): ECE {ece_after:.3f}"),
    )
    for ax, bins, title in panels:
        centers = ((bins["lower"] + bins["upper"]) / 2).to_numpy()
        width = float((bins["upper"] - bins["lower"]).iloc[0])
        accuracy = bins["accuracy"].to_numpy(dtype=float)
        confidence = bins["confidence"].to_numpy(dtype=float)
        filled = bins["count"].to_numpy() > 0
        ax.bar(centers[filled], accuracy[filled], width=width * 0.9, color="C0", label="accuracy in bin")
        ax.plot(centers[filled], confidence[filled], linestyle="none", marker="_", markersize=11,
                markeredgewidth=2.5, color="C3", label="mean confidence in bin")
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect calibration")
        for x, y, count in zip(centers[filled], accuracy[filled], bins["count"].to_numpy()[filled]):
            ax.text(x, min(y, 0.93) + 0.02, str(count), ha="center", fontsize=6, color="dimgray")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7, loc="upper left")
    figure.suptitle("Reliability (numbers above bars: photos per bin)", fontsize=10)
    return figure
