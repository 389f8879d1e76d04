"""The priority head: value mapping, training, export, serving and its place in the policy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from model.cli import evaluate_command, train_command
from model.data import DataError, load_dataset
from model.inference import Classifier, ModelError, Prediction
from model.priority import LEVELS, map_priorities, parse_priority_map, priority_level
from model.train import TrainConfig, train_model
from plugin.policy import Policy
from plugin.tickets import Party, Ticket

SAMPLE = Path(__file__).parent / "fixtures" / "data" / "it-service-tickets-sample.csv"
# Jira's priority names, one per queue, so the head has something to learn from the text.
PRIORITY_OF_QUEUE = {"Access": "Highest", "Hardware": "High", "HR Support": "Medium"}


def rows_with_priority() -> list[dict]:
    with SAMPLE.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for number, row in enumerate(rows):
        # Every 20th row has no priority, as in exports where the field was left empty.
        row["priority"] = "" if number % 20 == 0 else PRIORITY_OF_QUEUE.get(row["queue"], "Low")
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "tickets.csv", rows_with_priority())


@pytest.fixture(scope="module")
def trained(data_file, tmp_path_factory):
    dataset = load_dataset(data_file, ["text"], "queue", priority_column="priority")
    out = tmp_path_factory.mktemp("model")
    metrics = train_model(dataset, out, TrainConfig(name="sample", target_precision=0.8))
    return out, metrics


@pytest.mark.parametrize(
    ("value", "level"),
    [
        ("urgent", "urgent"),
        ("Highest", "urgent"),
        ("1 - Critical", "urgent"),
        ("P2", "high"),
        ("Priority 3", "normal"),
        ("Medium", "normal"),
        ("4", "low"),
        ("Lowest", "low"),
        ("Very High", "high"),
        ("0", None),
        ("whenever", None),
    ],
)
def test_priority_level_reads_common_spellings(value, level):
    assert priority_level(value) == level


def test_explicit_map_comes_first():
    mapping = parse_priority_map("0=urgent, 3=LOW")

    assert mapping == {"0": "urgent", "3": "low"}
    assert priority_level("3", mapping) == "low"
    assert priority_level("0", mapping) == "urgent"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("P1", "is not VALUE=LEVEL"),
        ("P1=soon", "level must be one of low, normal"),
        ("Sev A=urgent,sev a=low", "gives 'sev a' two levels: urgent and low"),
    ],
)
def test_bad_map_entries_are_named(text, message):
    with pytest.raises(DataError, match=message):
        parse_priority_map(text)


def test_unmapped_values_are_listed_with_counts():
    with pytest.raises(DataError) as caught:
        map_priorities(["P1", "soonish", "soonish", "", "later"])

    message = str(caught.value)
    assert "'soonish' (2 rows)" in message
    assert "'later' (1 row)" in message
    assert "--priority-map" in message


def test_training_writes_a_checked_priority_head(trained):
    out, metrics = trained
    head = metrics["priority"]

    assert (out / "priority.onnx").is_file()
    assert head["column"] == "priority"
    assert head["labels"] == ["low", "normal", "high", "urgent"]
    assert head["value_map"] == {
        "High": "high",
        "Highest": "urgent",
        "Low": "low",
        "Medium": "normal",
    }
    assert head["rows"]["without_priority"] == 24
    assert sum(head["rows"][part] for part in ("train", "validation", "test")) == 480 - 24
    assert head["test"]["onnx_agreement"] >= 0.995
    # The levels follow the queues, so the head must do far better than the largest level.
    assert head["test"]["accuracy"] > 0.6
    for level, entry in head["thresholds"].items():
        assert level in LEVELS
        if entry["threshold"] is not None:
            assert entry["precision"] >= 0.8


def test_served_priority_respects_thresholds(trained):
    classifier = Classifier.load(trained[0])
    rows = rows_with_priority()

    predictions = classifier.predict_many([row["text"] for row in rows])

    assert classifier.priority_levels == ["low", "normal", "high", "urgent"]
    confident = [p for p in predictions if p.predicted_priority is not None]
    assert confident, "no ticket reached a priority threshold"
    for prediction in predictions:
        assert prediction.priority_confidence is not None
        if prediction.predicted_priority is not None:
            cutoff = classifier.priority_thresholds[prediction.predicted_priority]
            assert cutoff is not None and prediction.priority_confidence >= cutoff
    expected = {row["text"]: PRIORITY_OF_QUEUE.get(row["queue"], "Low") for row in rows}
    mapped = {"Highest": "urgent", "High": "high", "Medium": "normal", "Low": "low"}
    right = np.mean(
        [
            mapped[expected[row["text"]]] == p.predicted_priority
            for row, p in zip(rows, predictions, strict=True)
            if p.predicted_priority is not None
        ]
    )
    assert right >= 0.8
    assert "predicted_priority" in predictions[0].to_dict()


def test_guarded_text_gets_no_priority(trained):
    prediction = Classifier.load(trained[0]).predict("help")

    assert prediction.guards
    assert prediction.predicted_priority is None


def test_model_without_head_predicts_no_priority():
    prediction = Classifier.load().predict("my laptop screen is broken and flickers all day")

    assert prediction.predicted_priority is None
    assert prediction.priority_confidence is None


def test_mismatched_priority_head_is_rejected(trained, tmp_path):
    for name in ("model.onnx", "metrics.json", "terms.json"):
        (tmp_path / name).write_bytes((trained[0] / name).read_bytes())

    with pytest.raises(ModelError, match="priority.onnx"):
        Classifier.load(tmp_path)

    (tmp_path / "priority.onnx").write_bytes((trained[0] / "model.onnx").read_bytes())
    with pytest.raises(ModelError, match="is not the priority head"):
        Classifier.load(tmp_path)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (["urgent", "high", "normal", "low"], "'priority.labels' must list at least two"),
        (["low", "low", "high", "urgent"], "'priority.labels' must list at least two"),
        (["low", "normal", "high", "bogus"], "'priority.labels' must list at least two"),
        ([1, 2, 3, 4], "'priority.labels' must list at least two"),
        (None, "'priority' must be an object"),
    ],
)
def test_edited_priority_labels_are_rejected(trained, tmp_path, labels, message):
    for name in ("model.onnx", "metrics.json", "terms.json", "priority.onnx"):
        (tmp_path / name).write_bytes((trained[0] / name).read_bytes())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    if labels is None:
        metrics["priority"] = None
    else:
        metrics["priority"]["labels"] = labels
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))

    with pytest.raises(ModelError, match=message):
        Classifier.load(tmp_path)


def test_retraining_without_priority_removes_the_old_head(data_file, tmp_path):
    config = TrainConfig(name="sample", target_precision=0.8)
    train_model(load_dataset(data_file, ["text"], "queue", priority_column="priority"), tmp_path)
    assert (tmp_path / "priority.onnx").is_file()

    metrics = train_model(load_dataset(data_file, ["text"], "queue"), tmp_path, config)

    assert "priority" not in metrics
    assert not (tmp_path / "priority.onnx").exists()
    assert (
        Classifier.load(tmp_path).predict("printer is jammed on floor two").priority_confidence
        is None
    )


def test_one_level_only_is_an_error(data_file, tmp_path):
    rows = rows_with_priority()
    for row in rows:
        row["priority"] = "High"
    dataset = load_dataset(
        write_csv(tmp_path / "one.csv", rows), ["text"], "queue", priority_column="priority"
    )

    with pytest.raises(DataError, match="at least two levels"):
        train_model(dataset, tmp_path / "model")


def test_cli_train_with_map_and_evaluate(tmp_path):
    rows = rows_with_priority()
    codes = {"Highest": "0", "High": "1", "Medium": "2", "Low": "3", "": ""}
    for row in rows:
        row["urgency"] = codes[row.pop("priority")]
    data = write_csv(tmp_path / "coded.csv", rows)
    out = tmp_path / "model"
    runner = CliRunner()
    base = ["--data", str(data), "--text", "text", "--label", "queue"]

    unmapped = runner.invoke(train_command, [*base, "--out", str(out), "--priority", "urgency"])
    assert unmapped.exit_code == 1
    assert "'0' (" in unmapped.output
    assert "--priority-map" in unmapped.output

    codes_map = "0=urgent,1=high,2=normal,3=low"
    result = runner.invoke(
        train_command,
        [*base, "--out", str(out), "--priority", "urgency", "--priority-map", codes_map],
    )
    assert result.exit_code == 0, result.output
    assert "priority head on 'urgency'" in result.output

    evaluated = runner.invoke(
        evaluate_command,
        ["--model", str(out), *base, "--priority", "urgency", "--split", "test", "--json"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads(evaluated.output)["priority"]
    metrics = json.loads((out / "metrics.json").read_text())["priority"]
    assert report["rows"] == metrics["rows"]["test"]
    assert report["accuracy"] == metrics["test"]["accuracy"]
    assert report["at_thresholds"]["coverage"] == metrics["test"]["at_thresholds"]["coverage"]


def test_cli_priority_map_needs_priority_column(tmp_path):
    result = CliRunner().invoke(
        train_command,
        ["--data", str(SAMPLE), "--text", "text", "--label", "queue", "--out", str(tmp_path)]
        + ["--priority-map", "P1=urgent"],
    )

    assert result.exit_code == 2
    assert "--priority-map needs --priority" in result.output


def test_evaluate_priority_without_values(trained, tmp_path):
    rows = rows_with_priority()
    for row in rows:
        row["priority"] = ""
    data = write_csv(tmp_path / "empty.csv", rows)

    result = CliRunner().invoke(
        evaluate_command,
        ["--model", str(trained[0]), "--data", str(data), "--text", "text", "--label", "queue"]
        + ["--priority", "priority"],
    )

    assert result.exit_code == 1
    assert "no row has a priority in column 'priority'" in result.output


def test_evaluate_priority_needs_a_head(tmp_path):
    result = CliRunner().invoke(
        evaluate_command,
        ["--model", "model/default", "--data", str(SAMPLE), "--text", "text", "--label", "queue"]
        + ["--priority", "queue"],
    )

    assert result.exit_code == 2
    assert "has no priority head" in result.output


def make_prediction(**values) -> Prediction:
    return Prediction(
        queue="Hardware",
        confidence=0.95,
        threshold=0.6,
        alternatives=[("Access", 0.03)],
        probabilities={"Hardware": 0.95, "Access": 0.03},
        model_version="test",
        **values,
    )


def test_policy_priority_from_head():
    policy = Policy.load(None)
    ticket = Ticket(
        helpdesk="zendesk",
        id="7",
        subject="Laptop",
        description="The laptop does not start",
        requester=Party(email="pat@northwind.example"),
    )

    from_model = policy.decide(ticket, make_prediction(predicted_priority="high"))
    from_text = policy.decide(
        ticket, make_prediction(predicted_priority="high", priority_signal="urgent")
    )
    low = policy.decide(ticket, make_prediction(predicted_priority="low"))

    assert from_model.priority == "high"
    assert {"rule": "priority", "detail": "high from the priority model"} in from_model.reasons
    assert from_text.priority == "urgent"
    assert low.priority == policy.default_priority
