"""Explanation terms and the text profile guards, read from ``terms.json`` beside the model.

Training writes ``terms.json``: the model's word vocabulary, and per queue the word n-grams
that push a ticket towards that queue, each with the weight ``idf * (w_queue - mean_w)``
taken from the logistic regression. At serving time the words of a ticket are looked up in
those tables, so explaining a prediction costs one tokenisation and a few dict lookups, and
no second model call. Character n-grams are left out of the explanation because fragments
such as ``"ssw"`` mean nothing to an agent, although they take part in the prediction.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from model import signals
from model.normalize import EMAIL_TOKEN, NUMBER_TOKEN, URL_TOKEN

TERMS_FILE = "terms.json"
MAX_TERMS = 5
# Fewer words than this leave too little for the model to go on.
MIN_WORDS = 3
_HAS_LETTER = re.compile(r"[^\W\d_]")
_PLACEHOLDERS = frozenset(token.strip() for token in (EMAIL_TOKEN, URL_TOKEN, NUMBER_TOKEN))


@dataclass
class TextProfile:
    """Profile of the training texts, for the guards that flag unfamiliar tickets."""

    word_pattern: str
    vocabulary: frozenset[str]
    # Tickets whose share of known words is below this are flagged as unlike the training data.
    min_known_share: float | None = None
    languages: list[str] = field(default_factory=list)
    scripts: list[str] = field(default_factory=lambda: ["LATIN"])


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_terms(data: dict) -> None:
    """Raise ValueError for a terms.json field of the wrong type or range.

    A field of the wrong type would otherwise fail every prediction, or put a guard on
    every ticket, long after the model was loaded.
    """
    pattern = data.get("word_pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("'word_pattern' must be a non-empty string")
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(f"'word_pattern' is not a valid regular expression: {error}") from None
    for key in ("vocabulary", "languages", "scripts"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ValueError(f"{key!r} must be a list of strings")
    share = data.get("min_known_share")
    if share is not None and not (_is_number(share) and 0.0 <= share <= 1.0):
        raise ValueError(f"'min_known_share' must be null or a number from 0 to 1, found {share!r}")
    weights = data.get("weights")
    if not isinstance(weights, dict):
        raise ValueError("'weights' must be an object of queues")
    for queue, table in weights.items():
        if not isinstance(table, dict) or not all(_is_number(v) for v in table.values()):
            raise ValueError(f"weights of queue {queue!r} must map terms to numbers")


class Explainer:
    """Explanation terms and text guards of one model; immutable and thread-safe after load."""

    def __init__(self, profile: TextProfile, weights: dict[str, dict[str, float]]):
        self.profile = profile
        self._weights = weights
        # Training writes one table per queue, in the order of the model's outputs.
        self.queues = list(weights)
        self._bigram_starts = {
            queue: frozenset(term.split(" ", 1)[0] for term in table if " " in term)
            for queue, table in weights.items()
        }
        self._token = re.compile(profile.word_pattern)

    @classmethod
    def load(cls, folder: Path, model_version: str) -> Explainer | None:
        """Read ``terms.json`` from a model folder; None when the folder has none.

        Raises ValueError when the file belongs to another model version.
        """
        path = folder / TERMS_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        if data.get("model_version") != model_version:
            raise ValueError(
                f"{path} belongs to model version {data.get('model_version')}, "
                f"not {model_version}; retrain or copy the matching files"
            )
        _check_terms(data)
        profile = TextProfile(
            word_pattern=data["word_pattern"],
            vocabulary=frozenset(data["vocabulary"]),
            min_known_share=data.get("min_known_share"),
            languages=list(data.get("languages") or []),
            scripts=list(data.get("scripts") or ["LATIN"]),
        )
        return cls(profile, data["weights"])

    def words(self, normalized: str) -> list[str]:
        return self._token.findall(normalized)

    def terms(self, words: list[str], queue: str, limit: int = MAX_TERMS) -> list[str]:
        """Return up to ``limit`` word n-grams of the ticket that push it most towards ``queue``."""
        weights = self._weights.get(queue)
        if not weights or not words:
            return []
        starts = self._bigram_starts[queue]
        scores: dict[str, float] = {}
        last = len(words) - 1
        for position, word in enumerate(words):
            weight = weights.get(word)
            if weight is not None:
                scores[word] = scores.get(word, 0.0) + weight
            # Building the bigram string only where one can match keeps this cheap.
            if position < last and word in starts:
                bigram = f"{word} {words[position + 1]}"
                weight = weights.get(bigram)
                if weight is not None:
                    scores[bigram] = scores.get(bigram, 0.0) + weight
        ranked = sorted(scores.items(), key=lambda item: -item[1])
        return [term for term, _ in ranked[:limit]]

    def known_share(self, words: list[str]) -> tuple[float, int]:
        """Return the share of content words found in the vocabulary, and their number.

        Stop words are left out because some training sets come with them removed, so the
        stop words of a live ticket would count as unknown and flag ordinary tickets.
        """
        vocabulary = self.profile.vocabulary
        content = known = 0
        for word in words:
            if word in vocabulary:
                known += 1
                content += 1
            elif not signals.is_stop_word(word):
                content += 1
        return (known / content if content else 0.0), content

    def guards(self, normalized: str, words: list[str]) -> list[str]:
        """Return the reasons why this text is unlike the texts the model was trained on."""
        reasons = []
        script = signals.dominant_script(normalized)
        if script not in self.profile.scripts:
            reasons.append(
                f"text is in {script.title()} script, which the model was not trained on"
            )
        language = signals.detect_language(normalized)
        if language and self.profile.languages and language not in self.profile.languages:
            trained = ", ".join(signals.LANGUAGE_NAMES.get(x, x) for x in self.profile.languages)
            reasons.append(
                f"text looks {signals.LANGUAGE_NAMES.get(language, language)}, "
                f"the model was trained on {trained}"
            )
        floor = self.profile.min_known_share
        share, content = self.known_share(words)
        if floor is not None and content >= MIN_WORDS and share < floor:
            reasons.append(
                f"text is unlike the training data ({share:.0%} of its words are known "
                f"to the model, at least {floor:.0%} expected)"
            )
        return reasons


def basic_guards(normalized: str) -> list[str]:
    """Return the guards that need no model: empty and too short texts."""
    if not normalized:
        return ["text is empty"]
    count = 0
    for word in normalized.split():
        if word not in _PLACEHOLDERS and _HAS_LETTER.search(word):
            count += 1
            if count >= MIN_WORDS:
                return []
    return [f"text is too short ({count} words, at least {MIN_WORDS} needed)"]
