"""Loading labelled ticket files for training and evaluation.

Reads CSV or JSON Lines without scikit-learn, so ``deskroute evaluate`` works on a server
that has only the serving dependencies.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from model.normalize import normalize_text

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
MAX_FIELD_BYTES = 16 * 1024 * 1024
DEFAULT_MIN_ROWS = 10
DEFAULT_FALLBACK_LABEL = "Other"


class DataError(ValueError):
    """A training or evaluation file that cannot be used; the message names file and column."""


@dataclass
class Dataset:
    """Normalised texts and labels of one file, with a record of what was dropped or merged."""

    texts: list[str]
    labels: list[str]
    source: dict = field(default_factory=dict)
    # Raw values of the priority column, one per text, when one was named ("" when empty).
    priorities: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)


def parse_columns(value: str) -> list[str]:
    """Split a comma-separated column option such as ``short_description,description``."""
    columns = [part.strip() for part in value.split(",") if part.strip()]
    if not columns:
        raise DataError(f"no text column given in {value!r}")
    return columns


def read_records(path: Path) -> tuple[list[dict], list[str]]:
    """Read a CSV file (header row) or a JSON Lines file into dicts and the column names.

    Both are read as UTF-8, with or without the byte order mark that spreadsheet programs
    write.
    """
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        if path.suffix.lower() in JSONL_SUFFIXES:
            return _read_jsonl(path)
        return _read_csv(path)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (byte 0x{error.object[error.start]:02x}: {error.reason}); "
            "save it as UTF-8"
        ) from error


def _read_csv(path: Path) -> tuple[list[dict], list[str]]:
    # Ticket descriptions with long mail threads exceed the csv module's default field
    # limit of 128 KiB.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_BYTES))
    with path.open(newline="", encoding="utf-8-sig") as handle:
        # strict: an unterminated quote is an error instead of swallowing the rest of the
        # file into one field.
        reader = csv.DictReader(handle, strict=True)
        if not reader.fieldnames:
            raise DataError(f"{path}: empty CSV file, expected a header row")
        repeated = sorted({name for name in reader.fieldnames if reader.fieldnames.count(name) > 1})
        if repeated:
            raise DataError(f"{path}: the header row repeats column(s) {', '.join(repeated)}")
        records = []
        try:
            for record in reader:
                # DictReader files the fields beyond the header under the key None.
                if None in record:
                    raise DataError(
                        f"{path}: line {reader.line_num} has more fields than the header row"
                    )
                records.append(record)
        except csv.Error as error:
            raise DataError(f"{path}: invalid CSV at line {reader.line_num}: {error}") from error
        return records, list(reader.fieldnames)


def _read_jsonl(path: Path) -> tuple[list[dict], list[str]]:
    records: list[dict] = []
    columns: dict[str, None] = {}
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as error:
                # ValueError covers JSONDecodeError and integers over Python's digit limit;
                # RecursionError comes from arrays nested thousands deep.
                reason = "nested too deeply" if isinstance(error, RecursionError) else error
                raise DataError(f"{path}: invalid JSON at line {number}: {reason}") from error
            if not isinstance(record, dict):
                raise DataError(f"{path}: line {number} is not a JSON object")
            records.append(record)
            columns.update(dict.fromkeys(record))
    return records, list(columns)


def load_dataset(
    path: str | Path,
    text_columns: list[str],
    label_column: str,
    *,
    min_rows: int = DEFAULT_MIN_ROWS,
    fallback_label: str = DEFAULT_FALLBACK_LABEL,
    known_labels: list[str] | None = None,
    priority_column: str | None = None,
) -> Dataset:
    """Load, normalise and check a labelled file.

    Rows whose normalised text is empty or whose label is missing are dropped and counted.
    For training (``known_labels`` is None), labels with fewer than ``min_rows`` rows are
    merged into ``fallback_label``, and fewer than two remaining labels raise
    :class:`DataError`. For evaluation, labels the model does not know are mapped to the
    fallback label when the model has one and kept otherwise, so they count as errors.
    """
    path = Path(path)
    if label_column in text_columns:
        raise DataError(
            f"column {label_column!r} is both the label and a text column; the model would "
            "learn the answer from the text"
        )
    records, columns = read_records(path)
    required = [*text_columns, label_column, *([priority_column] if priority_column else [])]
    missing = [name for name in required if name not in columns]
    if missing:
        raise DataError(
            f"{path}: column(s) {', '.join(missing)} not found; the file has: {', '.join(columns)}"
        )
    if not records:
        raise DataError(f"{path}: no data rows")

    texts: list[str] = []
    labels: list[str] = []
    priorities: list[str] = []
    empty_texts = 0
    missing_labels = 0
    for number, record in enumerate(records, start=1):
        for name in text_columns:
            value = record.get(name)
            # JSON Lines values can be true, arrays or objects, which read as "True" or "[...]".
            if isinstance(value, bool | list | dict):
                raise DataError(
                    f"{path}: record {number}, column {name!r} contains "
                    f"{type(value).__name__} {json.dumps(value)[:40]}, expected text"
                )
        label = _cell(record.get(label_column)).strip()
        if not label:
            missing_labels += 1
            continue
        parts = [_cell(record.get(name)) for name in text_columns]
        text = normalize_text("\n".join(parts))
        if not text:
            empty_texts += 1
            continue
        texts.append(text)
        labels.append(label)
        if priority_column:
            priorities.append(_cell(record.get(priority_column)).strip())

    if not texts:
        raise DataError(f"{path}: no row has both a label and a non-empty text")

    merged: dict[str, int] = {}
    dropped_rare = 0
    if known_labels is None:
        labels, merged = merge_rare_labels(labels, min_rows, fallback_label)
        # A fallback queue that is still smaller than min_rows cannot be split into train,
        # validation and test rows, so its rows are dropped and counted instead.
        if 0 < labels.count(fallback_label) < min_rows:
            kept_rows = [i for i, label in enumerate(labels) if label != fallback_label]
            dropped_rare = len(labels) - len(kept_rows)
            texts = [texts[i] for i in kept_rows]
            labels = [labels[i] for i in kept_rows]
            priorities = [priorities[i] for i in kept_rows] if priority_column else []
        distinct = sorted(set(labels))
        if len(distinct) < 2:
            found = repr(distinct[0]) if distinct else "none"
            raise DataError(
                f"{path}: column {label_column!r} has only one class ({found}) "
                f"after merging labels with fewer than {min_rows} rows; at least two are needed"
            )
    else:
        labels, merged = _map_unknown_labels(labels, known_labels, fallback_label)

    source = {
        "file": path.name,
        "sha256": file_sha256(path),
        "text_columns": text_columns,
        "label_column": label_column,
        "rows_read": len(records),
        "rows_used": len(texts),
        "dropped_empty_text": empty_texts,
        "dropped_missing_label": missing_labels,
        "merged_labels": merged,
        "fallback_label": fallback_label if merged and not dropped_rare else None,
        "dropped_rare_label": dropped_rare,
        "label_counts": dict(sorted(Counter(labels).items())),
    }
    if known_labels is None:
        # Kept so that ``evaluate --split`` can load the file exactly as training did.
        source["min_rows"] = min_rows
    logger.info(
        "loaded %s: %d rows used, %d empty texts and %d missing labels dropped, %d labels merged",
        path,
        len(texts),
        empty_texts,
        missing_labels,
        len(merged),
    )
    if priority_column:
        source["priority_column"] = priority_column
    return Dataset(
        texts=texts,
        labels=labels,
        source=source,
        priorities=priorities if priority_column else None,
    )


def _cell(value) -> str:
    """Return a CSV cell or JSON value as text; only a missing value or null is empty."""
    return "" if value is None else str(value)


def merge_rare_labels(
    labels: list[str], min_rows: int, fallback_label: str
) -> tuple[list[str], dict[str, int]]:
    """Map every label with fewer than ``min_rows`` rows to ``fallback_label``.

    Returns the new labels and the merged labels with their row counts. The fallback queue
    itself is kept even when it stays small, because its rows have nowhere else to go.
    """
    counts = Counter(labels)
    merged = {
        label: count
        for label, count in sorted(counts.items())
        if count < min_rows and label != fallback_label
    }
    if not merged:
        return labels, {}
    return [fallback_label if label in merged else label for label in labels], merged


def _map_unknown_labels(
    labels: list[str], known_labels: list[str], fallback_label: str
) -> tuple[list[str], dict[str, int]]:
    known = set(known_labels)
    unknown = Counter(label for label in labels if label not in known)
    if not unknown or fallback_label not in known:
        return labels, {}
    return [label if label in known else fallback_label for label in labels], dict(unknown)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
