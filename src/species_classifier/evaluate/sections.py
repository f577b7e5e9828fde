"""The sections of `report.html`, rendered from one `ReportData`."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from species_classifier.evaluate import plots
from species_classifier.evaluate.calibration import CALIBRATION_JSON, Calibration
from species_classifier.evaluate.html_page import (
    card,
    escape,
    format_number,
    format_percent,
    html_page,
    html_table,
    png_image,
    thumbnail_data_uri,
)
from species_classifier.evaluate.metrics import ClassificationMetrics, Predictions
from species_classifier.model.averaging import is_averaged
from species_classifier.model.bundle import Bundle

log = logging.getLogger(__name__)

DEFAULT_MISTAKES = 24
# Rows of the excluded-images table shown in the page; the CSV has all of them.
MAX_EXCLUDED_ROWS = 300
MAX_LOOKALIKE_ROWS = 25
MAX_THUMBNAIL_ATTEMPTS_PER_TILE = 4
ATTRIBUTION_COLUMNS = ("license", "attribution", "credit")


@dataclass
class ReportData:
    """Everything one report shows. `source` is "out-of-fold" or "dataset"."""

    run_dir: Path
    bundle: Bundle
    source: str
    predictions: Predictions
    metrics: ClassificationMetrics
    calibration: Calibration | None
    excluded: pd.DataFrame
    excluded_file: str
    dataset: str = ""
    training_metrics: pd.DataFrame | None = None
    best_epochs: dict[int, int] = field(default_factory=dict)
    fold_model_f1: dict[int | str, float] = field(default_factory=dict)
    max_mistakes: int = DEFAULT_MISTAKES

    @property
    def fold_count(self) -> int:
        return len(self.bundle.folds) or len(self.predictions.fold_ids)


def render_report(data: ReportData) -> str:
    """Return the report page as one HTML string."""
    sections = [
        _header_section(data),
        _thresholds_section(data),
        _per_class_section(data),
        _confusion_section(data),
        _curves_section(data),
        _calibration_section(data),
        _lookalike_section(data),
        _mistakes_section(data),
        _excluded_section(data),
        _run_section(data),
    ]
    title = f"Evaluation: {data.run_dir.name}" + (f" on {data.dataset}" if data.dataset else "")
    return html_page(title, "\n".join(section for section in sections if section))


def _header_section(data: ReportData) -> str:
    metrics = data.metrics
    if data.source == "out-of-fold":
        title = f"Evaluation of {escape(data.run_dir.name)}"
        subtitle = (
            f"Out-of-fold predictions: every photo is scored by the fold model that did not train on it. "
            f"{escape(data.bundle.model_name)}, {data.fold_count} fold(s), created {escape(data.bundle.created or 'n/a')}."
        )
        if len(metrics.macro_f1_per_fold) >= 2:
            headline = card(
                f"{metrics.macro_f1_mean:.3f} ± {metrics.macro_f1_std:.3f}",
                f"macro F1, mean ± std over {len(metrics.macro_f1_per_fold)} folds "
                f"(pooled {metrics.macro_f1_pooled:.3f})",
                headline=True,
            )
        else:
            headline = card(f"{metrics.macro_f1_pooled:.3f}", "macro F1 on the validation split", headline=True)
    else:
        title = f"Evaluation of {escape(data.run_dir.name)} on {escape(data.dataset)}"
        if is_averaged(data.bundle):
            scorer = "one model whose weights are the mean of the source run's fold models' weights (average-folds)"
        else:
            scorer = f"the mean of the run's {data.fold_count} fold model(s)"
        subtitle = (
            f"A separate labelled dataset, scored by {scorer} "
            f"({escape(data.bundle.model_name)}). Species that are not targets count as "
            f"<code>{escape(data.bundle.classes[-1])}</code>."
        )
        label = "macro F1 of the ensemble"
        if len(data.fold_model_f1) >= 2:
            values = list(data.fold_model_f1.values())
            label += f" (single fold models {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f})"
        headline = card(f"{metrics.macro_f1_pooled:.3f}", label, headline=True)

    cards = [
        headline,
        card(format_percent(metrics.accuracy), "accuracy"),
        card(str(metrics.n_photos), "photos scored"),
        card(str(len(data.excluded)), "images excluded (unreadable)"),
    ]
    if data.calibration:
        cards.append(card(f"{data.calibration.temperature:.2f}", "temperature T"))
        cards.append(card(
            f"{data.calibration.ece_before:.3f} → {data.calibration.ece_after:.3f}", "expected calibration error"
        ))
    return f'<h1>{title}</h1>\n<p class="sub">{subtitle}</p>\n<div class="cards">{"".join(cards)}</div>'


def _thresholds_section(data: ReportData) -> str:
    calibration = data.calibration
    if calibration is None:
        return ""
    rows = []
    for species, point in calibration.operating_points.items():
        rows.append({
            "species": species,
            "threshold": point.threshold,
            "true_accept": point.true_accept_rate,
            "false_accept": point.false_accept_rate,
            "n_positive": point.n_positive,
            "n_negative": point.n_negative,
        })
    table = html_table(
        pd.DataFrame(rows),
        formats={
            "threshold": lambda v: format_number(v, 3),
            "true_accept": format_percent,
            "false_accept": format_percent,
        },
        headers={
            "species": "Target species",
            "threshold": "Threshold (calibrated P)",
            "true_accept": "True accept rate",
            "false_accept": "False accept rate",
            "n_positive": "Photos of species",
            "n_negative": "Other photos",
        },
        cell_classes=lambda column, value: (
            "bad" if column == "false_accept" and not math.isnan(value) and value > calibration.max_false_accept else ""
        ),
    )
    if data.source == "out-of-fold":
        how = (
            f"Each threshold is the lowest calibrated probability at which at most "
            f"{format_percent(calibration.max_false_accept)} of photos of other species are accepted. "
            f"A photo is accepted as species S when S is its top class and P(S) reaches the threshold. "
            f"Thresholds and rates are measured on the same out-of-fold photos, so they are in-sample "
            f"estimates; <code>{CALIBRATION_JSON}</code> stores them for serving."
        )
    else:
        how = (
            f"The run's <code>{CALIBRATION_JSON}</code> thresholds (chosen on out-of-fold photos for a "
            f"{format_percent(calibration.max_false_accept)} false-accept limit), measured on this dataset. "
            f"Red cells exceed that limit."
        )
    return f'<h2>Field-app thresholds</h2>\n<p class="note">{how}</p>\n{table}'


def _per_class_section(data: ReportData) -> str:
    per_class = data.metrics.per_class.copy()
    targets = set(data.bundle.targets)
    row_classes = ["target" if name in targets else "" for name in per_class["class"]]
    table = html_table(
        per_class,
        formats={column: format_number for column in ("precision", "recall", "f1")},
        headers={"class": "Class", "precision": "Precision", "recall": "Recall", "f1": "F1",
                 "support": "Photos", "predicted": "Predicted as"},
        row_classes=row_classes,
    )
    figure = png_image(plots.figure_png(plots.plot_per_class(per_class)), "precision, recall and F1 per class")
    note = (
        "Scores use the top class of each photo (no threshold). n/a: precision of a class never "
        "predicted, or recall of a class with no photos."
    )
    return f'<h2>Per-class results</h2>\n<p class="note">{note}</p>\n{table}\n{figure}'


def _confusion_section(data: ReportData) -> str:
    classes = data.bundle.classes
    overall = plots.plot_confusion(data.metrics.confusion, classes, "All photos")
    parts = [
        "<h2>Confusion matrices</h2>",
        '<p class="note">Rows are true classes and columns predicted classes.</p>',
        png_image(plots.figure_png(overall), "confusion matrix, all photos"),
    ]
    if len(data.metrics.confusion_per_fold) >= 2:
        folds = []
        for fold, matrix in data.metrics.confusion_per_fold.items():
            f1 = data.metrics.macro_f1_per_fold.get(fold, math.nan)
            figure = plots.plot_confusion(matrix, classes, f"Fold {fold} (macro F1 {format_number(f1)})")
            folds.append(png_image(plots.figure_png(figure), f"confusion matrix, fold {fold}"))
        parts.append(f"<details><summary>Per fold ({len(folds)} folds)</summary>{''.join(folds)}</details>")
    return "\n".join(parts)


def _curves_section(data: ReportData) -> str:
    if data.training_metrics is None:
        return ""
    figure = plots.plot_training_curves(data.training_metrics, data.best_epochs)
    return "<h2>Training curves</h2>\n" + png_image(plots.figure_png(figure), "training curves per fold")


def _calibration_section(data: ReportData) -> str:
    calibration = data.calibration
    if calibration is None:
        return ""
    figure = plots.plot_reliability(
        calibration.bins_before, calibration.bins_after,
        calibration.ece_before, calibration.ece_after, calibration.temperature,
    )
    if data.source == "out-of-fold":
        note = (
            f"Temperature scaling divides the logits by T = {calibration.temperature:.3f}, fitted by minimising "
            f"the negative log-likelihood on all {calibration.n_photos} out-of-fold photos "
            f"(NLL {calibration.nll_before:.3f} → {calibration.nll_after:.3f}). "
            "ECE uses 15 equal-width bins of the top-class probability."
        )
        if not calibration.used_logits:
            note += " The prediction table has no logit columns, so T was fitted on log-probabilities."
    else:
        note = (
            f"The run's temperature T = {calibration.temperature:.3f} applied to the ensemble's mean logits "
            f"on this dataset. \"Before\" is the ensemble's mean of fold probabilities, as <code>predict</code> "
            f"reports it. ECE uses 15 equal-width bins of the top-class probability."
        )
    return f'<h2>Calibration</h2>\n<p class="note">{note}</p>\n' + png_image(plots.figure_png(figure), "reliability diagram")


def _lookalike_section(data: ReportData) -> str:
    lookalikes = data.metrics.lookalikes
    if lookalikes is None or lookalikes.empty:
        return ""
    shown = lookalikes.copy()
    has_role = "role" in data.predictions.table.columns
    scope = "look-alike species (by their role)" if has_role else "species that are not targets"
    formats = {"confusion_rate": format_percent}
    headers = {
        "species_name": "Species", "n_photos": "Photos", "n_predicted_target": "Predicted as a target",
        "confusion_rate": "Share predicted as a target", "most_predicted_target": "Most often taken for",
    }
    if "accepted_rate" in shown.columns:
        formats["accepted_rate"] = format_percent
        headers["accepted_rate"] = "Share accepted at threshold"
    table = html_table(shown, formats=formats, headers=headers, max_rows=MAX_LOOKALIKE_ROWS)
    return (
        f'<h2>Look-alike confusion</h2>\n<p class="note">How often photos of {scope} get a target species as '
        f"their top class, most confused first.</p>\n{table}"
    )


def _resolve_image(path: str, run_dir: Path) -> Path:
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        return run_dir / candidate
    return candidate


def _mistakes_section(data: ReportData) -> str:
    if data.max_mistakes <= 0:
        return ""
    predictions = data.predictions
    table = predictions.table
    if "path" not in table.columns:
        return ""
    wrong = np.flatnonzero(predictions.predicted != predictions.labels)
    if not len(wrong):
        return "<h2>Worst mistakes</h2>\n<p>No photo is misclassified.</p>"
    order = wrong[np.argsort(-predictions.confidence[wrong], kind="stable")]
    classes = predictions.classes
    attribution_columns = [c for c in ATTRIBUTION_COLUMNS if c in table.columns]

    tiles, unreadable = [], 0
    # Bounded, so that a run whose photos were moved does not try to open every wrong one.
    for row in order[: MAX_THUMBNAIL_ATTEMPTS_PER_TILE * data.max_mistakes]:
        if len(tiles) >= data.max_mistakes:
            break
        path = str(table.at[row, "path"])
        image = thumbnail_data_uri(_resolve_image(path, data.run_dir))
        if image is None:
            unreadable += 1
            continue
        true_name = classes[predictions.labels[row]]
        species = table.at[row, "species_name"] if "species_name" in table.columns else true_name
        if str(species) != true_name:
            true_name = f"{species} ({true_name})"
        fold = f", fold {int(predictions.folds[row])}" if predictions.folds is not None else ""
        credits = []
        for column in attribution_columns:
            value = table.at[row, column]
            if isinstance(value, str) and value.strip():
                credits.append(f"{escape(column)}: {escape(value)}")
        tiles.append(
            f'<div class="mistake"><img alt="{escape(Path(path).name)}" src="{image}">'
            f'<div class="true">true: {escape(true_name)}</div>'
            f'<div class="pred">predicted: {escape(classes[predictions.predicted[row]])}</div>'
            f"<div>confidence {predictions.confidence[row]:.3f}{fold}</div>"
            f'<div class="meta">{escape(Path(path).name)}</div>'
            + "".join(f'<div class="meta">{credit}</div>' for credit in credits)
            + "</div>"
        )
    if tiles:
        note = f"The {len(tiles)} most confident wrong predictions of {len(wrong)} misclassified photos."
    else:
        note = f"{len(wrong)} photos are misclassified, but none of their images could be read for a thumbnail."
    if unreadable:
        log.warning("%d image(s) could not be read for the report's thumbnails", unreadable)
        note += f" {unreadable} image(s) could not be read for a thumbnail and were skipped."
    return f'<h2>Worst mistakes</h2>\n<p class="note">{note}</p>\n<div class="mistakes">{"".join(tiles)}</div>'


def _excluded_section(data: ReportData) -> str:
    excluded = data.excluded
    if excluded.empty:
        return '<h2>Excluded images</h2>\n<p class="note">No image was excluded.</p>'
    reasons = excluded["reason"].value_counts().rename_axis("reason").reset_index(name="images")
    table = html_table(excluded[[c for c in ("path", "species_name", "reason") if c in excluded.columns]],
                       headers={"path": "Path", "species_name": "Species", "reason": "Reason"},
                       max_rows=MAX_EXCLUDED_ROWS)
    return (
        f'<h2>Excluded images</h2>\n<p class="note">{len(excluded)} image(s) could not be read and are not in '
        f"the metrics; all are listed in <code>{escape(data.excluded_file)}</code>.</p>\n"
        f"{html_table(reasons, headers={'reason': 'Reason', 'images': 'Images'})}\n{table}"
    )


def _run_section(data: ReportData) -> str:
    bundle = data.bundle
    parts = ["<h2>Run details</h2>"]
    facts = pd.DataFrame([
        {"item": "run folder", "value": str(data.run_dir)},
        {"item": "classes", "value": ", ".join(bundle.classes)},
        {"item": "model", "value": bundle.model_name},
        {"item": "input size", "value": f"{bundle.preprocess.input_size} px"},
        {"item": "versions", "value": ", ".join(f"{k} {v}" for k, v in bundle.versions.items())},
    ])
    parts.append(html_table(facts, show_header=False))
    if bundle.folds:
        folds = pd.DataFrame(bundle.folds)
        folds = folds[[c for c in ("fold", "best_epoch", "best_macro_f1", "epochs_run", "n_train", "n_val")
                       if c in folds.columns]]
        formats = {"best_macro_f1": format_number} if "best_macro_f1" in folds.columns else {}
        parts.append("<h3>Folds</h3>" + html_table(folds, formats=formats))
    if bundle.training:
        config = escape(json.dumps(bundle.training, indent=2, default=str))
        parts.append(f"<details><summary>Training configuration</summary><pre>{config}</pre></details>")
    return "\n".join(parts)
