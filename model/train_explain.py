"""Build ``terms.json``: explanation weights and the text profile read by model/explain.py."""

from __future__ import annotations

from collections import Counter

import numpy as np

from model import signals
from model.explain import MIN_WORDS, Explainer, TextProfile

TERMS_PER_QUEUE = 300
# Share of training rows a language or script needs to count as trained on.
MIN_LANGUAGE_SHARE = 0.05
MIN_SCRIPT_SHARE = 0.01
# Below this share of rows with a detectable language (texts with stop words removed), the
# configured languages are recorded in place of detected ones.
MIN_DETECTED_SHARE = 0.10
# The known-word floor is the 1st percentile of validation tickets, capped at this value.
KNOWN_SHARE_PERCENTILE = 1.0
MAX_KNOWN_SHARE_FLOOR = 0.5


def build_terms(
    pipeline,
    labels: list[str],
    word_pattern: str,
    train_texts: list[str],
    validation_texts: list[str],
    configured_languages: list[str],
) -> dict:
    """Return the content of terms.json (without the model version) for a fitted pipeline."""
    features = dict(pipeline.named_steps["features"].transformer_list)
    word_vectorizer = features["word"]
    coefficients = pipeline.named_steps["classifier"].coef_
    if coefficients.shape[0] == 1:
        # With two classes scikit-learn keeps one row, the weights of the second class
        # against a first class at zero. Halved and mirrored, they are the same centred
        # weights that several classes give.
        coefficients = np.vstack([-coefficients, coefficients]) / 2
    word_columns = len(word_vectorizer.vocabulary_)
    names = word_vectorizer.get_feature_names_out()

    # FeatureUnion puts the word block first. Centering over the queues gives how much a
    # term favours one queue over the others, which is what moves the softmax.
    word_coefficients = coefficients[:, :word_columns]
    centered = word_coefficients - word_coefficients.mean(axis=0, keepdims=True)
    values = centered * word_vectorizer.idf_[np.newaxis, :]
    # Stop words carry weight in some sets but explain nothing to an agent.
    explanatory = np.array([not any(map(signals.is_stop_word, term.split(" "))) for term in names])
    values = np.where(explanatory[np.newaxis, :], values, 0.0)
    weights = {}
    for row, label in enumerate(labels):
        top = np.argsort(-values[row], kind="stable")[:TERMS_PER_QUEUE]
        weights[label] = {
            str(names[column]): round(float(values[row, column]), 5)
            for column in top
            if values[row, column] > 0
        }

    vocabulary = sorted(str(term) for term in names if " " not in term)
    languages, language_source = _languages(train_texts, configured_languages)
    profile = TextProfile(
        word_pattern=word_pattern,
        vocabulary=frozenset(vocabulary),
        languages=languages,
        scripts=_scripts(train_texts),
    )
    explainer = Explainer(profile, weights)
    floor = _known_share_floor(explainer, validation_texts)
    return {
        "word_pattern": word_pattern,
        "vocabulary": vocabulary,
        "min_known_share": floor,
        "languages": languages,
        "language_source": language_source,
        "scripts": profile.scripts,
        "weights": weights,
    }


def _known_share_floor(explainer: Explainer, texts: list[str]) -> float | None:
    shares = []
    for text in texts:
        share, content = explainer.known_share(explainer.words(text))
        if content >= MIN_WORDS:
            shares.append(share)
    if not shares:
        return None
    floor = float(np.percentile(shares, KNOWN_SHARE_PERCENTILE))
    return round(min(floor, MAX_KNOWN_SHARE_FLOOR), 4)


def _languages(texts: list[str], configured: list[str]) -> tuple[list[str], str]:
    detected = Counter(signals.detect_language(text) for text in texts)
    found = sum(count for language, count in detected.items() if language)
    if found < MIN_DETECTED_SHARE * len(texts):
        return list(configured), "configured"
    languages = [
        language
        for language, count in detected.most_common()
        if language and count >= MIN_LANGUAGE_SHARE * found
    ]
    return languages, "detected"


def _scripts(texts: list[str]) -> list[str]:
    counts = Counter(signals.dominant_script(text) for text in texts)
    scripts = {script for script, count in counts.items() if count >= MIN_SCRIPT_SHARE * len(texts)}
    return sorted(scripts | {"LATIN"})
