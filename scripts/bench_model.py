"""Print latency, size and load figures of a trained deskroute model.

Figures, measured on the machine it runs on:

- the size of every file in the model folder;
- the cold load time of ``Classifier.load`` in a fresh interpreter, with and without imports;
- single-ticket ``predict`` latency at p50, p90 and p99, and the part of it spent in the ONNX
  session and in normalize_text;
- ``predict_many`` throughput.

Usage::

    python scripts/bench_model.py                          # model/default, fixture tickets
    python scripts/bench_model.py --model DIR --data tickets.csv --text text --count 2000
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.inference import DEFAULT_MODEL_DIR, Classifier  # noqa: E402
from model.normalize import normalize_text  # noqa: E402

SAMPLE = ROOT / "tests" / "fixtures" / "data" / "it-service-tickets-sample.csv"
LOAD_RUNS = 5
COLD_LOAD = """
import sys, time
started = time.perf_counter()
sys.path.insert(0, {root!r})
from model.inference import Classifier
imported = time.perf_counter()
Classifier.load({model!r})
done = time.perf_counter()
print(done - started, done - imported)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Model folder.")
    parser.add_argument("--data", type=Path, default=SAMPLE, help="CSV file with ticket texts.")
    parser.add_argument("--text", default="text", help="Text column(s), comma-separated.")
    parser.add_argument("--count", type=int, default=1000, help="Tickets to time one by one.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()

    texts = _texts(args.data, args.text.split(","), args.count)
    classifier = Classifier.load(args.model)
    figures = {
        "model": str(args.model),
        "model_version": classifier.version,
        "tickets": len(texts),
        "files_bytes": {p.name: p.stat().st_size for p in sorted(args.model.iterdir())},
        "cold_load_seconds": _cold_load(args.model),
        "predict_ms": _timed(classifier.predict, texts),
        "session_ms": _timed(lambda t: classifier.probabilities([t]), map(normalize_text, texts)),
        "normalize_ms": _timed(normalize_text, texts),
        "predict_many_per_second": _throughput(classifier, texts),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    _print(figures)
    return 0


def _texts(path: Path, columns: list[str], count: int) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    texts = ["\n".join(row.get(column) or "" for column in columns) for row in rows]
    while len(texts) < count:
        texts = texts + texts
    return texts[:count]


def _timed(function, items) -> dict:
    items = list(items)
    for item in items[:50]:
        function(item)
    timings = []
    for item in items:
        started = time.perf_counter()
        function(item)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()

    def percentile(p: float) -> float:
        return round(timings[min(len(timings) - 1, int(p * len(timings)))], 4)

    return {
        "p50": round(statistics.median(timings), 4),
        "p90": percentile(0.90),
        "p99": percentile(0.99),
        "mean": round(statistics.fmean(timings), 4),
    }


def _cold_load(model: Path) -> dict:
    """Run Classifier.load in fresh interpreters; return the median total and load-only seconds."""
    totals, loads = [], []
    code = COLD_LOAD.format(root=str(ROOT), model=str(model))
    for _ in range(LOAD_RUNS):
        output = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
        totals.append(float(output[0]))
        loads.append(float(output[1]))
    return {
        "with_imports": round(statistics.median(totals), 4),
        "load_only": round(statistics.median(loads), 4),
    }


def _throughput(classifier: Classifier, texts: list[str]) -> float:
    started = time.perf_counter()
    classifier.predict_many(texts, batch_size=64)
    return round(len(texts) / (time.perf_counter() - started), 1)


def _print(figures: dict) -> None:
    print(f"model {figures['model_version']} ({figures['model']}), {figures['tickets']} tickets")
    for name, size in figures["files_bytes"].items():
        print(f"  {name}: {size / 1e6:.2f} MB")
    load = figures["cold_load_seconds"]
    print(f"cold load: {load['load_only']:.3f} s ({load['with_imports']:.3f} s with imports)")
    for key, label in (
        ("predict_ms", "predict()"),
        ("session_ms", "ONNX session"),
        ("normalize_ms", "normalize_text"),
    ):
        t = figures[key]
        print(f"{label:<15} p50 {t['p50']:.3f} ms  p90 {t['p90']:.3f} ms  p99 {t['p99']:.3f} ms")
    print(f"predict_many: {figures['predict_many_per_second']:.0f} tickets/s")


if __name__ == "__main__":
    raise SystemExit(main())
