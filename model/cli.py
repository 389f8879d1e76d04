"""``deskroute train`` and ``deskroute evaluate``.

Plain click commands; the ``deskroute`` group in plugin/cli.py registers them. ``train``
needs the ``train`` extra, ``evaluate`` only the serving dependencies.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from collections import Counter
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from model import evaluation
from model.data import (
    DEFAULT_FALLBACK_LABEL,
    DEFAULT_MIN_ROWS,
    DataError,
    load_dataset,
    parse_columns,
)
from model.priority import map_priorities, parse_priority_map
from model.train import TrainConfig, train_model

logger = logging.getLogger(__name__)

DEFAULT_OUT = "model/default"
# Steps that train_model reports through its progress callback.
TRAIN_STEPS = 6
# Imported by model.train only inside its functions, so the CLI loads without them.
TRAIN_MODULES = ("sklearn", "skl2onnx", "onnx")
SPLITS = ("all", "train", "validation", "test")
MAX_NAME_LENGTH = 64


@click.command("train")
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labelled tickets, CSV with a header row or JSON Lines (.jsonl).",
)
@click.option(
    "--text", "text_columns", required=True, help="Text column, or several joined by commas."
)
@click.option("--label", "label_column", required=True, help="Column holding the queue.")
@click.option(
    "--out",
    "out_dir",
    default=DEFAULT_OUT,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder that receives model.onnx, metrics.json and terms.json.",
)
@click.option(
    "--target-precision",
    default=evaluation.DEFAULT_TARGET_PRECISION,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, min_open=True),
    help="Precision each queue's threshold must reach on the validation split.",
)
@click.option(
    "--name", default=None, help="Model name in the version string; default: the data folder."
)
@click.option(
    "--min-rows",
    default=DEFAULT_MIN_ROWS,
    show_default=True,
    type=click.IntRange(3),
    help="Labels with fewer rows are merged into the fallback queue.",
)
@click.option(
    "--fallback-label",
    default=DEFAULT_FALLBACK_LABEL,
    show_default=True,
    help="Queue that receives the rows of rare labels.",
)
@click.option(
    "--word-features",
    default=TrainConfig.word_features,
    show_default=True,
    type=click.IntRange(1),
    help="Word n-grams kept by chi-squared selection.",
)
@click.option(
    "--char-features",
    default=TrainConfig.char_features,
    show_default=True,
    type=click.IntRange(1),
    help="Character n-grams kept by chi-squared selection.",
)
@click.option(
    "--c",
    "regularization_c",
    default=TrainConfig.regularization_c,
    show_default=True,
    type=click.FloatRange(0.0, min_open=True),
    help="Inverse regularisation strength of the logistic regression.",
)
@click.option(
    "--tune",
    is_flag=True,
    help="Try several feature counts and C values; keep the best on the validation split.",
)
@click.option(
    "--priority",
    "priority_column",
    default=None,
    help="Column holding the ticket priority; trains a priority head beside the queue head.",
)
@click.option(
    "--priority-map",
    default=None,
    help="Priority values to levels, such as 'P1=urgent,P2=high,P3=normal,P4=low'.",
)
def train_command(
    data_file: Path,
    text_columns: str,
    label_column: str,
    out_dir: Path,
    target_precision: float,
    name: str | None,
    min_rows: int,
    fallback_label: str,
    word_features: int,
    char_features: int,
    regularization_c: float,
    tune: bool,
    priority_column: str | None,
    priority_map: str | None,
) -> None:
    """Train a classifier on a labelled file and export it to ONNX with its metrics."""
    missing = [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"training needs {', '.join(missing)}: install the 'train' extra "
            "(pip install 'deskroute[train]')"
        )

    try:
        levels = parse_priority_map(priority_map)
    except DataError as error:
        raise click.BadParameter(str(error), param_hint="--priority-map") from error
    if priority_map and not priority_column:
        raise click.UsageError("--priority-map needs --priority")
    dataset = _load(
        data_file, text_columns, label_column, min_rows, fallback_label, None, priority_column
    )
    _report_data(dataset.source)
    config = TrainConfig(
        name=_model_name(name or data_file.resolve().parent.name),
        target_precision=target_precision,
        word_features=word_features,
        char_features=char_features,
        regularization_c=regularization_c,
        tune=tune,
        priority_map=levels,
    )

    steps = TRAIN_STEPS + (1 if priority_column else 0)
    with tqdm(total=steps, desc="train", unit="step") as bar:

        def progress(message: str) -> None:
            # Each message starts a step, so it completes the one before it.
            if bar.postfix:
                bar.update(1)
            bar.set_postfix_str(message)

        try:
            metrics = train_model(dataset, out_dir, config, progress=progress)
        except (DataError, RuntimeError) as error:
            raise click.ClickException(str(error)) from error
        bar.update(bar.total - bar.n)

    test = metrics["test"]
    click.echo(f"model {metrics['model_version']} written to {out_dir}")
    click.echo(
        f"test: accuracy {test['accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}, "
        f"ONNX agreement {test['onnx_agreement']:.4f}"
    )
    routed = test["at_thresholds"]
    click.echo(
        f"at the per-queue thresholds (target precision {target_precision}): "
        f"coverage {routed['coverage']:.4f}, precision {_format(routed['precision'])}"
    )
    _print_thresholds(metrics["thresholds"])
    head = metrics.get("priority")
    if head:
        click.echo(
            f"priority head on {head['column']!r}: test accuracy {head['test']['accuracy']:.4f}, "
            f"macro-F1 {head['test']['macro_f1']:.4f}; "
            f"{head['rows']['without_priority']} rows without a priority left out"
        )
        click.echo("  values: " + ", ".join(f"{k}={v}" for k, v in head["value_map"].items()))
        _print_thresholds(head["thresholds"])


def _model_name(name: str) -> str:
    """Keep the model name to letters, digits, dots, dashes and underscores.

    The name starts the model version, which goes into logs, notes and tags.
    """
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "model"
    return cleaned[:MAX_NAME_LENGTH]


def _print_thresholds(thresholds: dict) -> None:
    for label, entry in thresholds.items():
        click.echo(
            f"  {label}: threshold {_format(entry['threshold'])}, validation precision "
            f"{_format(entry['precision'])}, coverage {entry['coverage']:.4f}"
        )


@click.command("evaluate")
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Model folder with model.onnx, metrics.json and terms.json.",
)
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Labelled tickets, CSV with a header row or JSON Lines (.jsonl).",
)
@click.option(
    "--text", "text_columns", required=True, help="Text column, or several joined by commas."
)
@click.option("--label", "label_column", required=True, help="Column holding the queue.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option(
    "--batch-size",
    default=64,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Tickets scored per ONNX call.",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="all",
    show_default=True,
    help="Score one part of the split made at training time; needs the file the model "
    "was trained on and the 'train' extra.",
)
@click.option(
    "--priority",
    "priority_column",
    default=None,
    help="Column holding the ticket priority; reports the priority head on it.",
)
def evaluate_command(
    model_dir: Path,
    data_file: Path,
    text_columns: str,
    label_column: str,
    as_json: bool,
    batch_size: int,
    split: str,
    priority_column: str | None,
) -> None:
    """Score a labelled file with a trained model and report its quality."""
    from model.inference import Classifier, ModelError

    try:
        classifier = Classifier.load(model_dir)
    except ModelError as error:
        raise click.ClickException(str(error)) from error
    if split == "all":
        fallback = (classifier.metrics.get("data") or {}).get("fallback_label") or (
            DEFAULT_FALLBACK_LABEL
        )
    if priority_column and "priority" not in classifier.metrics:
        raise click.UsageError(f"model {classifier.version} has no priority head for --priority")
    if split == "all":
        fallback = (classifier.metrics.get("data") or {}).get("fallback_label") or (
            DEFAULT_FALLBACK_LABEL
        )
        dataset = _load(
            data_file, text_columns, label_column, 1, fallback, classifier.labels, priority_column
        )
    else:
        dataset = _load_split(
            classifier.metrics, data_file, text_columns, label_column, split, priority_column
        )
    if not set(dataset.labels) & set(classifier.labels):
        found = sorted(set(dataset.labels))
        listed = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise click.ClickException(
            f"none of the labels in {data_file} is a queue of model {classifier.version} "
            f"(the file has {listed}); check --label and --model"
        )
    report = evaluate(classifier, dataset, batch_size, show_progress=not as_json)
    if priority_column:
        try:
            report["priority"] = evaluate_priority(classifier, dataset, batch_size)
        except DataError as error:
            raise click.ClickException(str(error)) from error

    if as_json:
        click.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    _print_report(report)


def evaluate(classifier, dataset, batch_size: int = 64, show_progress: bool = False) -> dict:
    """Return the evaluation report of ``classifier`` on a loaded dataset."""
    labels = classifier.labels
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for label in dataset.labels if label not in index})
    # Rows of labels the model never learned stay in the report as errors: they get the
    # index len(labels), which no prediction has.
    y_true = np.array([index.get(label, len(labels)) for label in dataset.labels])

    parts = []
    starts = range(0, len(dataset.texts), batch_size)
    for start in tqdm(starts, desc="evaluate", unit="batch", disable=not show_progress):
        parts.append(classifier.probabilities(dataset.texts[start : start + batch_size]))
    probabilities = np.concatenate(parts)

    all_labels = labels + (["(unknown label)"] if unknown else [])
    summary = evaluation.classification_summary(y_true, probabilities.argmax(axis=1), all_labels)
    calibrated = {label: classifier.thresholds.get(label) for label in labels}
    return {
        "model_version": classifier.version,
        "data": dataset.source,
        "unknown_labels": unknown,
        **summary,
        "coverage_at_precision": {
            str(target): evaluation.coverage_at_precision(y_true, probabilities, target)
            for target in (0.90, 0.95)
        },
        "precision_coverage_curve": evaluation.precision_coverage_curve(y_true, probabilities),
        "at_thresholds": {
            "thresholds": calibrated,
            **evaluation.threshold_summary(y_true, probabilities, labels, calibrated),
            "per_queue": _per_queue_at_thresholds(y_true, probabilities, labels, calibrated),
        },
    }


def _per_queue_at_thresholds(y_true, probabilities, labels, thresholds) -> dict:
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    result = {}
    for i, label in enumerate(labels):
        mask = predicted == i
        threshold = thresholds.get(label)
        routed = mask & (confidence >= threshold) if threshold is not None else mask & False
        count = int(routed.sum())
        result[label] = {
            "threshold": threshold,
            "predicted": int(mask.sum()),
            "routed": count,
            "coverage": round(count / int(mask.sum()), 4) if mask.any() else 0.0,
            "precision": round(float((y_true[routed] == i).mean()), 4) if count else None,
        }
    return result


def evaluate_priority(classifier, dataset, batch_size: int = 64) -> dict:
    """Score the priority head on the rows of ``dataset`` that have a priority."""
    # The values seen at training time map as they did then, and so do the admin's own.
    head = classifier.metrics["priority"]
    mapping = {value.lower(): level for value, level in head.get("value_map", {}).items()}
    mapping.update((classifier.metrics.get("config") or {}).get("priority_map") or {})
    levels, _ = map_priorities(dataset.priorities or [], mapping)
    known = [i for i, level in enumerate(levels) if level is not None]
    if not known:
        raise DataError(
            f"no row has a priority in column {dataset.source.get('priority_column')!r}"
        )

    labels = classifier.priority_levels
    index = {level: i for i, level in enumerate(labels)}
    # A level the head never learned counts as an error, as unknown queues do.
    y_true = np.array([index.get(levels[i], len(labels)) for i in known])
    texts = [dataset.texts[i] for i in known]
    probabilities = classifier.priority_probabilities(texts, batch_size)

    unknown = sorted({levels[i] for i in known if levels[i] not in index})
    all_labels = labels + (["(unknown level)"] if unknown else [])
    cutoffs = dict(classifier.priority_thresholds)
    return {
        "column": dataset.source.get("priority_column"),
        "rows_without_priority": len(levels) - len(known),
        "unknown_levels": unknown,
        **evaluation.classification_summary(y_true, probabilities.argmax(axis=1), all_labels),
        "at_thresholds": {
            "thresholds": cutoffs,
            **evaluation.threshold_summary(y_true, probabilities, labels, cutoffs),
        },
    }


def _load_split(
    metrics: dict,
    data_file: Path,
    text_columns: str,
    label_column: str,
    split: str,
    priority_column: str | None = None,
):
    """Load the rows of one part of the training split, as ``train_model`` made it.

    The file, the columns and the loading options must be those of training, because any
    other gives another split. The SHA-256 and the row count in metrics.json check this.
    """
    missing = [name for name in TRAIN_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(
            f"--split needs {', '.join(missing)}: install the 'train' extra "
            "(pip install 'deskroute[train]')"
        )
    from model.data import Dataset, file_sha256
    from model.train import split_indices

    trained_on = metrics.get("data") or {}
    if not data_file.is_file():
        raise click.ClickException(f"{data_file}: data file not found")
    if file_sha256(data_file) != trained_on.get("sha256"):
        raise click.ClickException(
            f"{data_file} is not the file the model was trained on "
            f"({trained_on.get('file')}, SHA-256 {trained_on.get('sha256')}); "
            "--split needs that file"
        )
    columns = parse_columns(text_columns)
    if columns != trained_on.get("text_columns") or label_column != trained_on.get("label_column"):
        raise click.ClickException(
            "--split needs the columns the model was trained with: "
            f"--text {','.join(trained_on.get('text_columns') or [])} "
            f"--label {trained_on.get('label_column')}"
        )
    dataset = _load(
        data_file,
        text_columns,
        label_column,
        trained_on.get("min_rows", DEFAULT_MIN_ROWS),
        trained_on.get("fallback_label") or DEFAULT_FALLBACK_LABEL,
        None,
        priority_column,
    )
    if len(dataset) != trained_on.get("rows_used"):
        raise click.ClickException(
            f"{data_file} gave {len(dataset)} rows, the model was trained on "
            f"{trained_on.get('rows_used')}; the split cannot be made again"
        )
    config = metrics.get("config") or {}
    parts = dict(
        zip(
            ("train", "validation", "test"),
            split_indices(
                dataset.labels,
                config.get("validation_share", TrainConfig.validation_share),
                config.get("test_share", TrainConfig.test_share),
            ),
            strict=True,
        )
    )
    rows = parts[split]
    source = {**dataset.source, "split": split, "rows_used": len(rows)}
    source["label_counts"] = dict(sorted(Counter(dataset.labels[i] for i in rows).items()))
    return Dataset(
        texts=[dataset.texts[i] for i in rows],
        labels=[dataset.labels[i] for i in rows],
        source=source,
        priorities=None if dataset.priorities is None else [dataset.priorities[i] for i in rows],
    )


def _load(
    data_file,
    text_columns,
    label_column,
    min_rows,
    fallback_label,
    known_labels=None,
    priority_column=None,
):
    try:
        columns = parse_columns(text_columns)
        return load_dataset(
            data_file,
            columns,
            label_column,
            min_rows=min_rows,
            fallback_label=fallback_label,
            known_labels=known_labels,
            priority_column=priority_column,
        )
    except DataError as error:
        raise click.ClickException(str(error)) from error


def _report_data(source: dict) -> None:
    click.echo(
        f"{source['file']}: {source['rows_used']} of {source['rows_read']} rows used, "
        f"{len(source['label_counts'])} labels"
    )
    if source["dropped_empty_text"]:
        click.echo(f"  dropped {source['dropped_empty_text']} rows with an empty text")
    if source["dropped_missing_label"]:
        click.echo(f"  dropped {source['dropped_missing_label']} rows without a label")
    if source["merged_labels"]:
        merged = ", ".join(f"{label} ({count})" for label, count in source["merged_labels"].items())
        target = source["fallback_label"]
        if target:
            click.echo(f"  merged rare labels into {target!r}: {merged}")
        else:
            click.echo(
                f"  dropped {source['dropped_rare_label']} rows of rare labels, "
                f"too few even when merged: {merged}"
            )


def _print_report(report: dict) -> None:
    part = f", {report['data']['split']} split" if "split" in report["data"] else ""
    click.echo(f"model {report['model_version']} on {report['data']['file']}{part}")
    click.echo(
        f"rows {report['rows']}: accuracy {report['accuracy']:.4f}, "
        f"macro-F1 {report['macro_f1']:.4f}"
    )
    for target, coverage in report["coverage_at_precision"].items():
        click.echo(f"coverage at {target} precision (one global threshold): {coverage:.4f}")
    routed = report["at_thresholds"]
    click.echo(
        f"at the calibrated per-queue thresholds: coverage {routed['coverage']:.4f}, "
        f"precision {_format(routed['precision'])}"
    )
    click.echo(f"{'queue':<28} {'precision':>9} {'recall':>7} {'support':>8}")
    for label, entry in report["per_class"].items():
        click.echo(
            f"{label:<28} {entry['precision']:>9.4f} {entry['recall']:>7.4f} {entry['support']:>8}"
        )
    if report["unknown_labels"]:
        click.echo(f"labels the model does not know: {', '.join(report['unknown_labels'])}")
    head = report.get("priority")
    if head:
        routed = head["at_thresholds"]
        click.echo(
            f"priority head on {head['column']!r}, {head['rows']} rows: accuracy "
            f"{head['accuracy']:.4f}, macro-F1 {head['macro_f1']:.4f}; at its thresholds "
            f"coverage {routed['coverage']:.4f}, precision {_format(routed['precision'])}"
        )


def _format(value) -> str:
    return "none" if value is None else f"{value:.4f}"
