"""Training, export, calibration and serving of the classifier, end to end on a real sample."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model.cli import evaluate_command, train_command
from model.data import DataError, load_dataset
from model.inference import DEFAULT_MODEL_DIR, Classifier, ModelError, Prediction
from model.train import TUNING_GRID, TrainConfig, build_pipeline, split_indices, train_model

SAMPLE = Path(__file__).parent / "fixtures" / "data" / "it-service-tickets-sample.csv"
# The rows of the shipped model's test split, in file order.
TEST_SPLIT = SAMPLE.with_name("it-service-tickets-test-split.csv")
QUEUES = [
    "Access",
    "Administrative rights",
    "HR Support",
    "Hardware",
    "Internal Project",
    "Miscellaneous",
    "Purchase",
    "Storage",
]
CONFIG = TrainConfig(name="sample", target_precision=0.8)


@pytest.fixture(scope="module")
def sample():
    return load_dataset(SAMPLE, ["text"], "queue")


@pytest.fixture(scope="module")
def trained(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    metrics = train_model(sample, out, CONFIG)
    return out, metrics


@pytest.fixture(scope="module")
def classifier(trained):
    return Classifier.load(trained[0])


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def sample_rows() -> list[dict]:
    with SAMPLE.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_train_writes_model_and_metrics(trained, sample):
    out, metrics = trained
    onnx_bytes = (out / "model.onnx").read_bytes()
    stored = json.loads((out / "metrics.json").read_text())

    assert stored == metrics
    assert metrics["labels"] == QUEUES
    assert metrics["model_version"] == f"sample-{hashlib.sha256(onnx_bytes).hexdigest()[:12]}"
    assert metrics["rows"] == {"train": 336, "validation": 72, "test": 72}
    assert metrics["data"]["rows_used"] == len(sample) == 480
    assert metrics["data"]["file"] == SAMPLE.name
    assert metrics["model_file_bytes"] == len(onnx_bytes)
    assert 0.0 < metrics["test"]["accuracy"] <= 1.0
    assert 0.0 < metrics["test"]["macro_f1"] <= 1.0
    assert set(metrics["test"]["per_class"]) == set(QUEUES)
    assert set(metrics["thresholds"]) == set(QUEUES)
    assert sum(entry["support"] for entry in metrics["test"]["per_class"].values()) == 72


def test_split_is_stratified_and_deterministic(sample):
    first = split_indices(sample.labels, 0.15, 0.15)
    second = split_indices(sample.labels, 0.15, 0.15)

    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
    train, validation, test = first
    assert len(set(train) | set(validation) | set(test)) == len(sample)
    labels = np.array(sample.labels)
    for queue in QUEUES:
        assert (labels[test] == queue).sum() == 9
        assert (labels[validation] == queue).sum() == 9


def test_onnx_agrees_with_sklearn(sample, classifier, trained):
    labels = np.array([QUEUES.index(label) for label in sample.labels])
    texts = np.array(sample.texts, dtype=object)
    train, _, test = split_indices(sample.labels, 0.15, 0.15)
    pipeline = build_pipeline(list(texts[train]), labels[train], CONFIG)

    expected = pipeline.predict_proba(list(texts[test]))
    actual = classifier.probabilities(list(texts[test]))

    assert np.abs(expected - actual).max() < 1e-4
    assert (expected.argmax(axis=1) == actual.argmax(axis=1)).mean() >= 0.995
    assert trained[1]["test"]["onnx_agreement"] >= 0.995


def test_batched_scores_equal_single(sample, classifier):
    texts = sample.texts[:40]

    batched = classifier.probabilities(texts, batch_size=16)
    single = np.concatenate([classifier.probabilities([text]) for text in texts])

    assert np.abs(batched - single).max() < 1e-5


def test_thresholds_reach_precision_on_validation(sample, classifier, trained):
    metrics = trained[1]
    labels = np.array([QUEUES.index(label) for label in sample.labels])
    _, validation, _ = split_indices(sample.labels, 0.15, 0.15)
    probabilities = classifier.probabilities([sample.texts[i] for i in validation])
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    truth = labels[validation]
    calibrated = [q for q in QUEUES if metrics["thresholds"][q]["threshold"] is not None]

    assert calibrated, "no queue reached the target precision on the sample"
    for index, queue in enumerate(QUEUES):
        entry = metrics["thresholds"][queue]
        mine = predicted == index
        if entry["threshold"] is None:
            assert entry["coverage"] == 0.0
            continue
        routed = mine & (confidence >= entry["threshold"])
        precision = (truth[routed] == index).mean()
        assert precision >= CONFIG.target_precision
        assert entry["precision"] == pytest.approx(precision, abs=1e-4)
        assert entry["coverage"] == pytest.approx(routed.sum() / mine.sum(), abs=1e-4)
        # No lower candidate threshold reaches the target with enough rows.
        for lower in confidence[mine & (confidence < entry["threshold"])]:
            below = mine & (confidence >= lower)
            assert (truth[below] == index).mean() < CONFIG.target_precision or (
                below.sum() < CONFIG.min_support
            )


def test_predict_returns_full_prediction(classifier):
    text = "<p>Hello,</p><p>please purchase a new laptop docking station for our team</p>"

    prediction = classifier.predict(text)

    assert isinstance(prediction, Prediction)
    assert prediction.queue in QUEUES
    assert prediction.model_version == classifier.version
    assert prediction.probabilities[prediction.queue] == pytest.approx(
        prediction.confidence, abs=1e-6
    )
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert len(prediction.alternatives) == 3
    scores = [prediction.confidence] + [score for _, score in prediction.alternatives]
    assert scores == sorted(scores, reverse=True)
    assert prediction.queue not in [queue for queue, _ in prediction.alternatives]
    assert prediction.threshold == classifier.thresholds[prediction.queue]
    assert prediction.guards == []
    data = prediction.to_dict()
    assert data["queue"] == prediction.queue
    assert data["meets_threshold"] == prediction.meets_threshold
    assert json.loads(json.dumps(data)) == data


def test_empty_text_is_guarded(classifier):
    for text in ("", "   \n\t", "<p> </p>"):
        prediction = classifier.predict(text)
        assert prediction.guards == ["text is empty"]
        assert not prediction.meets_threshold


def test_short_text_is_guarded(classifier):
    prediction = classifier.predict("laptop")

    assert prediction.guards
    assert "too short" in prediction.guards[0]
    assert not prediction.meets_threshold


def test_meets_threshold_rules():
    base = dict(
        queue="Access",
        confidence=0.8,
        alternatives=[],
        probabilities={"Access": 0.8},
        model_version="m-1",
    )

    assert Prediction(threshold=0.7, **base).meets_threshold
    assert Prediction(threshold=0.8, **base).meets_threshold
    assert not Prediction(threshold=0.81, **base).meets_threshold
    assert not Prediction(threshold=None, **base).meets_threshold
    assert not Prediction(threshold=0.5, guards=["text is empty"], **base).meets_threshold


def test_predict_many_matches_predict(sample, classifier):
    texts = sample.texts[:10]

    many = classifier.predict_many(texts, batch_size=4)

    assert [p.queue for p in many] == [classifier.predict(t).queue for t in texts]


def test_predict_from_threads(sample, classifier):
    texts = sample.texts[:50]
    expected = [classifier.predict(text).probabilities for text in texts]
    results: dict[int, list] = {}

    def work(worker: int) -> None:
        results[worker] = [classifier.predict(text).probabilities for text in texts]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 4
    for worker_result in results.values():
        assert worker_result == expected


def copy_model(source: Path, target: Path) -> None:
    for name in ("model.onnx", "metrics.json", "terms.json"):
        (target / name).write_bytes((source / name).read_bytes())


def test_load_rejects_mismatched_metrics(trained, tmp_path):
    out = trained[0]
    copy_model(out, tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["model_version"] = "sample-000000000000"
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))

    with pytest.raises(ModelError, match="SHA-256"):
        Classifier.load(tmp_path)


def test_load_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        Classifier.load(tmp_path / "nothing")


def edit_metrics(folder: Path, change) -> None:
    metrics = json.loads((folder / "metrics.json").read_text())
    change(metrics)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def drop_labels(metrics):
    metrics["labels"] = metrics["labels"][:3]
    metrics["thresholds"] = {label: metrics["thresholds"][label] for label in metrics["labels"]}


def reverse_labels(metrics):
    metrics["labels"] = metrics["labels"][::-1]


def repeat_label(metrics):
    metrics["labels"][1] = metrics["labels"][0]


def drop_thresholds(metrics):
    del metrics["thresholds"]


def bare_threshold(metrics):
    metrics["thresholds"]["Access"] = 0.5


def empty_version_hash(metrics):
    metrics["model_version"] = "x-"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (drop_labels, "list the queues differently"),
        (reverse_labels, "list the queues differently"),
        (repeat_label, "'labels' repeats Access"),
        (drop_thresholds, "'thresholds' must have one entry per label"),
        (bare_threshold, "thresholds.Access must be an object with a 'threshold'"),
        (empty_version_hash, "'model_version' must be NAME-HASH"),
    ],
)
def test_load_rejects_edited_labels(trained, tmp_path, change, message):
    copy_model(trained[0], tmp_path)
    edit_metrics(tmp_path, change)

    with pytest.raises(ModelError, match=message):
        Classifier.load(tmp_path)


def test_load_rejects_wrong_label_count(trained, tmp_path):
    copy_model(trained[0], tmp_path)
    edit_metrics(tmp_path, drop_labels)
    terms = json.loads((tmp_path / "terms.json").read_text())
    terms["weights"] = {label: terms["weights"][label] for label in QUEUES[:3]}
    (tmp_path / "terms.json").write_text(json.dumps(terms))

    with pytest.raises(ModelError, match="returns 8 probabilities"):
        Classifier.load(tmp_path)


def test_load_needs_terms(trained, tmp_path):
    copy_model(trained[0], tmp_path)
    (tmp_path / "terms.json").unlink()

    with pytest.raises(ModelError, match="model file not found: .*terms.json"):
        Classifier.load(tmp_path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("min_known_share", "0.5", "'min_known_share' must be null or a number"),
        ("min_known_share", 5, "'min_known_share' must be null or a number"),
        ("scripts", "LATIN", "'scripts' must be a list of strings"),
        ("languages", "en", "'languages' must be a list of strings"),
        ("vocabulary", "abc", "'vocabulary' must be a list of strings"),
        ("word_pattern", "", "'word_pattern' must be a non-empty string"),
        ("word_pattern", "[a-z(", "'word_pattern' is not a valid regular expression"),
        ("weights", {"Access": {"password": "high"}}, "weights of queue 'Access' must map"),
    ],
)
def test_load_rejects_terms_of_wrong_type(trained, tmp_path, key, value, message):
    copy_model(trained[0], tmp_path)
    terms = json.loads((tmp_path / "terms.json").read_text())
    terms[key] = value
    (tmp_path / "terms.json").write_text(json.dumps(terms))

    with pytest.raises(ModelError, match=message):
        Classifier.load(tmp_path)


def test_load_rejects_metrics_not_utf8(trained, tmp_path):
    copy_model(trained[0], tmp_path)
    (tmp_path / "metrics.json").write_bytes(b'{"labels": ["Acc\xe8s"]}')

    with pytest.raises(ModelError, match="metrics.json: invalid JSON"):
        Classifier.load(tmp_path)


@pytest.mark.parametrize("content", ["[]", '{"model_version": 1}', "{"])
def test_load_rejects_invalid_terms(trained, tmp_path, content):
    copy_model(trained[0], tmp_path)
    (tmp_path / "terms.json").write_text(content)

    with pytest.raises(ModelError, match="terms.json: invalid"):
        Classifier.load(tmp_path)


@pytest.mark.parametrize("threshold", ["abc", 1.5, True])
def test_load_rejects_invalid_threshold(trained, tmp_path, threshold):
    copy_model(trained[0], tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    metrics["thresholds"]["Access"]["threshold"] = threshold
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))

    with pytest.raises(ModelError, match="thresholds.Access.threshold must be null or a number"):
        Classifier.load(tmp_path)


def test_missing_column_is_reported(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"body": "printer broken", "queue": "Hardware"}])

    with pytest.raises(DataError, match=r"column\(s\) text not found; the file has: body, queue"):
        load_dataset(path, ["text"], "queue")


def test_one_class_is_rejected(tmp_path):
    rows = [{"text": f"printer number {i} broken", "queue": "Hardware"} for i in range(30)]
    path = write_csv(tmp_path / "t.csv", rows)

    with pytest.raises(DataError, match="only one class"):
        load_dataset(path, ["text"], "queue")


def test_rare_labels_merge_into_fallback(tmp_path):
    rows = sample_rows()[:200]
    rows += [{"text": f"rare request {i} about the canteen", "queue": "Canteen"} for i in range(4)]
    rows += [{"text": f"rare request {i} about parking", "queue": "Parking"} for i in range(7)]
    path = write_csv(tmp_path / "t.csv", rows)

    dataset = load_dataset(path, ["text"], "queue", min_rows=10, fallback_label="Other")

    assert dataset.source["merged_labels"] == {"Canteen": 4, "Parking": 7}
    assert dataset.source["fallback_label"] == "Other"
    assert dataset.labels.count("Other") == 11
    assert "Canteen" not in dataset.labels


def test_tiny_fallback_is_dropped(tmp_path):
    rows = sample_rows()[:200]
    rows += [{"text": "rare request about the canteen menu", "queue": "Canteen"}]
    path = write_csv(tmp_path / "t.csv", rows)

    dataset = load_dataset(path, ["text"], "queue", min_rows=10)

    assert dataset.source["dropped_rare_label"] == 1
    assert dataset.source["fallback_label"] is None
    assert len(dataset) == 200


def test_empty_texts_are_dropped_and_counted(tmp_path):
    rows = sample_rows()[:100]
    rows += [{"text": "", "queue": "Hardware"}, {"text": "<br> ", "queue": "Access"}]
    rows += [{"text": "printer broken again today", "queue": ""}]
    path = write_csv(tmp_path / "t.csv", rows)

    dataset = load_dataset(path, ["text"], "queue")

    assert dataset.source["dropped_empty_text"] == 2
    assert dataset.source["dropped_missing_label"] == 1
    assert len(dataset) == 100


def test_jsonl_with_two_text_columns(tmp_path):
    path = tmp_path / "t.jsonl"
    with path.open("w") as handle:
        for row in sample_rows()[:200]:
            words = row["text"].split()
            record = {"subject": " ".join(words[:3]), "body": " ".join(words[3:])}
            handle.write(json.dumps({**record, "group": row["queue"]}) + "\n")

    dataset = load_dataset(path, ["subject", "body"], "group")

    assert len(dataset) == 200
    assert dataset.source["text_columns"] == ["subject", "body"]


def test_invalid_json_line_is_reported(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "queue": "b"}\n{not json\n')

    with pytest.raises(DataError, match="invalid JSON at line 2"):
        load_dataset(path, ["text"], "queue")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "invalid JSON at line 2: nested too deeply"),
        ('{"text": "a", "queue": ' + "9" * 5000 + "}", "invalid JSON at line 2: Exceeds"),
    ],
)
def test_hostile_json_lines_are_reported(tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "queue": "b"}\n' + line + "\n")

    with pytest.raises(DataError, match=message):
        load_dataset(path, ["text"], "queue")


def test_json_text_of_other_type_is_reported(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"text": "printer jammed", "queue": "Hardware"}\n{"text": true, "queue": "Access"}\n'
    )

    with pytest.raises(
        DataError, match="record 2, column 'text' contains bool true, expected text"
    ):
        load_dataset(path, ["text"], "queue")


def test_json_integer_labels_are_kept(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": f"printer jammed on floor {i}", "queue": i % 2} for i in range(20)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    dataset = load_dataset(path, ["text"], "queue")

    assert dataset.source["dropped_missing_label"] == 0
    assert sorted(set(dataset.labels)) == ["0", "1"]


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufefftext,queue\nprinter is jammed,Hardware\n".encode())

    dataset = load_dataset(path, ["text"], "queue", min_rows=1, known_labels=["Hardware"])

    assert dataset.labels == ["Hardware"]


def test_non_utf8_file_is_reported(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,queue\nimprimante bloquée,Hardware\n".encode("latin-1"))

    with pytest.raises(DataError, match="is not UTF-8 text .*save it as UTF-8"):
        load_dataset(path, ["text"], "queue")


def test_long_field_is_read(tmp_path):
    rows = sample_rows()
    rows[0] = {**rows[0], "text": rows[0]["text"] + " printer" * 30_000}
    path = write_csv(tmp_path / "long.csv", rows)

    dataset = load_dataset(path, ["text"], "queue")

    assert len(dataset) == 480


def test_repeated_header_is_reported(tmp_path):
    path = tmp_path / "twice.csv"
    path.write_text("text,queue,queue\nprinter is jammed,Hardware,Access\n")

    with pytest.raises(DataError, match="repeats column"):
        load_dataset(path, ["text"], "queue")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('text,queue\n"printer jammed,Hardware\nmouse broken,Hardware\n', "invalid CSV"),
        ("text,queue\nprinter jammed,Hardware,extra\n", "line 2 has more fields than"),
    ],
)
def test_malformed_csv_is_reported(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)

    with pytest.raises(DataError, match=message):
        load_dataset(path, ["text"], "queue")


def test_label_as_text_column_is_rejected():
    with pytest.raises(DataError, match="both the label and a text column"):
        load_dataset(SAMPLE, ["text", "queue"], "queue")


def test_two_queues_train_and_explain(tmp_path):
    rows = [row for row in sample_rows() if row["queue"] in ("Hardware", "Access")]
    dataset = load_dataset(write_csv(tmp_path / "two.csv", rows), ["text"], "queue")

    train_model(dataset, tmp_path / "model", CONFIG)
    classifier = Classifier.load(tmp_path / "model")
    prediction = classifier.predict(rows[0]["text"])

    assert classifier.labels == ["Access", "Hardware"]
    assert prediction.queue == rows[0]["queue"]
    assert prediction.terms
    terms = json.loads((tmp_path / "model" / "terms.json").read_text())["weights"]
    assert set(terms) == {"Access", "Hardware"}
    assert terms["Access"].keys().isdisjoint(terms["Hardware"])


def test_cli_model_name_is_cleaned(tmp_path):
    result = CliRunner().invoke(
        train_command,
        ["--data", str(SAMPLE), "--text", "text", "--label", "queue", "--out", str(tmp_path)]
        + ["--name", "../../our queues"],
    )

    assert result.exit_code == 0, result.output
    version = json.loads((tmp_path / "metrics.json").read_text())["model_version"]
    assert version.startswith("our-queues-")


def test_cli_train_and_evaluate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "model"

    trained = runner.invoke(
        train_command,
        ["--data", str(SAMPLE), "--text", "text", "--label", "queue", "--out", str(out)],
    )
    assert trained.exit_code == 0, trained.output
    assert "test: accuracy" in trained.output
    assert (out / "model.onnx").is_file()

    evaluated = runner.invoke(
        evaluate_command,
        ["--model", str(out), "--data", str(SAMPLE), "--text", "text", "--label", "queue"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "accuracy" in evaluated.output

    as_json = runner.invoke(
        evaluate_command,
        ["--model", str(out), "--data", str(SAMPLE), "--text", "text", "--label", "queue"]
        + ["--json"],
    )
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["model_version"] == metrics["model_version"]
    assert report["rows"] == 480
    assert report["confusion_matrix"]["labels"] == QUEUES
    assert sum(map(sum, report["confusion_matrix"]["rows"])) == 480
    diagonal = sum(report["confusion_matrix"]["rows"][i][i] for i in range(len(QUEUES)))
    assert report["accuracy"] == pytest.approx(diagonal / 480, abs=1e-4)
    assert set(report["at_thresholds"]["per_queue"]) == set(QUEUES)
    assert len(report["precision_coverage_curve"]) > 3


def evaluate_json(model_dir: Path, data: Path, *options: str) -> dict:
    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(model_dir), "--data", str(data), "--text", "text", "--label", "queue"]
        + ["--json", *options],
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_evaluate_split_reproduces_training_figures(trained):
    model_dir, metrics = trained

    test = evaluate_json(model_dir, SAMPLE, "--split", "test")
    validation = evaluate_json(model_dir, SAMPLE, "--split", "validation")

    assert test["data"]["split"] == "test"
    assert test["rows"] == metrics["rows"]["test"]
    assert test["accuracy"] == metrics["test"]["accuracy"]
    assert test["macro_f1"] == metrics["test"]["macro_f1"]
    for key in ("rows", "routed", "coverage", "precision"):
        assert test["at_thresholds"][key] == metrics["test"]["at_thresholds"][key]
        assert validation["at_thresholds"][key] == metrics["validation"]["at_thresholds"][key]
    assert validation["rows"] == metrics["rows"]["validation"]


def test_evaluate_split_needs_the_training_file(trained, tmp_path):
    rows = sample_rows()
    rows[0] = {**rows[0], "text": rows[0]["text"] + " printer"}
    edited = write_csv(tmp_path / "edited.csv", rows)

    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(trained[0]), "--data", str(edited), "--text", "text", "--label", "queue"]
        + ["--split", "test"],
    )

    assert result.exit_code == 1
    assert "is not the file the model was trained on" in result.output


def test_evaluate_split_needs_the_training_columns(trained):
    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(trained[0]), "--data", str(SAMPLE), "--text", "queue", "--label", "text"]
        + ["--split", "test"],
    )

    assert result.exit_code == 1
    assert "--split needs the columns the model was trained with: --text text --label queue" in (
        result.output
    )


def test_cli_train_reports_missing_column(tmp_path):
    result = CliRunner().invoke(
        train_command,
        ["--data", str(SAMPLE), "--text", "body", "--label", "queue", "--out", str(tmp_path)],
    )

    assert result.exit_code == 1
    assert "column(s) body not found" in result.output


def test_cli_train_reports_missing_file(tmp_path):
    result = CliRunner().invoke(
        train_command,
        ["--data", str(tmp_path / "none.csv"), "--text", "text", "--label", "queue"],
    )

    assert result.exit_code == 1
    assert "data file not found" in result.output


def test_shipped_model_matches_metrics():
    classifier = Classifier.load()
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())
    onnx_bytes = (DEFAULT_MODEL_DIR / "model.onnx").read_bytes()
    rows = sample_rows()

    predictions = classifier.predict_many([row["text"] for row in rows])

    assert classifier.version == metrics["model_version"]
    assert metrics["model_version"].endswith(hashlib.sha256(onnx_bytes).hexdigest()[:12])
    assert classifier.labels == QUEUES == metrics["labels"]
    assert len(onnx_bytes) < 10 * 1024 * 1024
    assert metrics["data"]["file"] == "train.csv"
    assert metrics["test"]["onnx_agreement"] >= 0.995
    assert {p.model_version for p in predictions} == {metrics["model_version"]}
    # The sample overlaps the shipped model's training rows, so this is a floor for a
    # working model, not a quality figure.
    accuracy = np.mean([p.queue == row["queue"] for p, row in zip(predictions, rows, strict=True)])
    assert accuracy >= metrics["test"]["accuracy"] - 0.05
    for queue, entry in metrics["thresholds"].items():
        assert classifier.thresholds[queue] == entry["threshold"]


def test_shipped_model_reproduces_its_test_figures():
    metrics = json.loads((DEFAULT_MODEL_DIR / "metrics.json").read_text())

    report = evaluate_json(DEFAULT_MODEL_DIR, TEST_SPLIT)

    test = metrics["test"]
    assert report["rows"] == metrics["rows"]["test"]
    assert report["accuracy"] == test["accuracy"]
    assert report["macro_f1"] == test["macro_f1"]
    assert report["per_class"] == test["per_class"]
    assert report["confusion_matrix"] == test["confusion_matrix"]
    assert report["coverage_at_precision"] == test["coverage_at_precision"]
    for key in ("rows", "routed", "coverage", "precision"):
        assert report["at_thresholds"][key] == test["at_thresholds"][key]


def test_training_bytes_do_not_depend_on_hash_seed(tmp_path):
    versions = set()
    # Without sorted domains, skl2onnx 1.20 writes different bytes under these two seeds.
    for seed in ("0", "4"):
        out = tmp_path / seed
        subprocess.run(
            [sys.executable, "-m", "plugin.cli", "train", "--data", str(SAMPLE)]
            + ["--text", "text", "--label", "queue", "--out", str(out)],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            check=True,
            timeout=300,
        )
        versions.add(json.loads((out / "metrics.json").read_text())["model_version"])

    assert len(versions) == 1


def test_tune_picks_best_validation(sample, tmp_path):
    config = TrainConfig(name="tuned", target_precision=0.8, tune=True)

    metrics = train_model(sample, tmp_path, config)

    tried = metrics["tuning"]
    assert len(tried) == len(TUNING_GRID)
    best = max(tried, key=lambda entry: entry["validation_accuracy"])
    assert metrics["config"]["word_features"] == best["word_features"]
    assert metrics["config"]["char_features"] == best["char_features"]
    assert metrics["config"]["regularization_c"] == best["regularization_c"]
    assert Classifier.load(tmp_path).predict("printer toner cartridge is empty").queue in QUEUES


def test_evaluate_counts_unknown_labels(trained, tmp_path):
    rows = sample_rows()[:40] + [{"text": "canteen menu for friday lunch", "queue": "Canteen"}]
    path = write_csv(tmp_path / "t.csv", rows)

    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(trained[0]), "--data", str(path), "--text", "text", "--label", "queue"]
        + ["--json"],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["unknown_labels"] == ["Canteen"]
    assert report["rows"] == 41
    assert report["confusion_matrix"]["labels"][-1] == "(unknown label)"
    assert report["per_class"]["(unknown label)"]["support"] == 1


def test_evaluate_with_no_known_label(tmp_path):
    rows = [{"text": row["text"], "queue": "Card arrival"} for row in sample_rows()[:20]]
    data = write_csv(tmp_path / "other.csv", rows)

    result = CliRunner().invoke(
        evaluate_command,
        ["--model", "model/default", "--data", str(data), "--text", "text", "--label", "queue"],
    )

    assert result.exit_code == 1
    assert "none of the labels in" in result.output
    assert "Card arrival" in result.output


def test_evaluate_missing_model(tmp_path):
    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(tmp_path), "--data", str(SAMPLE), "--text", "text", "--label", "queue"],
    )

    assert result.exit_code == 1
    assert "model file not found" in result.output
