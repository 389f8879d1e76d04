"""onnxruntime helpers shared by training and serving; imports no training library."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime

MODEL_FILE = "model.onnx"
# The priority head, present when training named a priority column.
PRIORITY_MODEL_FILE = "priority.onnx"
METRICS_FILE = "metrics.json"
INPUT_NAME = "text"
PROBABILITY_OUTPUT = "probabilities"


def model_version(name: str, onnx_bytes: bytes) -> str:
    """Return ``<name>-<first 12 hex digits of the SHA-256 of the ONNX file>``."""
    return f"{name}-{hashlib.sha256(onnx_bytes).hexdigest()[:12]}"


def session_for(model: bytes | str | Path) -> onnxruntime.InferenceSession:
    """Open an InferenceSession on one intra-op thread.

    One ticket is a few thousand n-gram lookups and one small matrix product: spreading it
    over threads costs more than it saves, and the web server runs requests in parallel.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(
        source, sess_options=options, providers=["CPUExecutionProvider"]
    )


def run_batched(
    session: onnxruntime.InferenceSession, texts: list[str], batch_size: int = 64
) -> np.ndarray:
    """Return the probability matrix for normalised texts, scored ``batch_size`` at a time.

    The exported TF-IDF builds a dense batch x features tensor, so a large batch costs
    batch_size x features x 4 bytes of memory.
    """
    output_name = _probability_output(session)
    if len(texts) == 1:
        batch = np.array([[texts[0]]], dtype=object)
        return session.run([output_name], {INPUT_NAME: batch})[0]
    parts = []
    for start in range(0, len(texts), batch_size):
        batch = np.array(texts[start : start + batch_size], dtype=object).reshape(-1, 1)
        parts.append(session.run([output_name], {INPUT_NAME: batch})[0])
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts)


def _probability_output(session: onnxruntime.InferenceSession) -> str:
    names = [output.name for output in session.get_outputs()]
    if PROBABILITY_OUTPUT in names:
        return PROBABILITY_OUTPUT
    return names[-1]
