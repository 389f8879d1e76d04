"""Priority rules, language and script detection, explanation terms and text guards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.explain import Explainer, TextProfile, basic_guards
from model.inference import Classifier
from model.normalize import normalize_text
from model.signals import detect_language, dominant_script, priority_signal


@pytest.mark.parametrize(
    ("text", "signal", "rule"),
    [
        ("The VPN is down since this morning, nobody can connect", "urgent", "outage"),
        ("Major outage of the ERP portal", "urgent", "outage"),
        ("Totalausfall im Lager, Server nicht erreichbar", "urgent", "outage"),
        ("Production is down at plant 3", "urgent", "production down"),
        ("Die Produktion steht seit 10 Uhr", "urgent", "production down"),
        ("I clicked a phishing link and my account was compromised", "urgent", "security"),
        ("Sicherheitsvorfall: Rechner gehackt", "urgent", "security"),
        ("All files were deleted from the shared drive", "urgent", "data loss"),
        ("Datenverlust nach dem Update, Daten sind weg", "urgent", "data loss"),
        ("Our lawyer will take legal action over this GDPR request", "urgent", "legal"),
        ("Wir behalten uns rechtliche Schritte vor", "urgent", "legal"),
        ("Please fix this urgently, I cannot work", "high", "urgency words"),
        ("Bitte dringend prüfen, so schnell wie möglich", "high", "urgency words"),
    ],
)
def test_priority_rules(text, signal, rule):
    found, rules = priority_signal(normalize_text(text))

    assert found == signal
    assert rule in rules


@pytest.mark.parametrize(
    "text",
    [
        "Please order a new docking station for my desk",
        "Download of the installer is slow",
        "Shut down the old laptop and wipe it",
        "Antivirus software licence renewal",
        "The SLA was breached on the last ticket",
        "",
    ],
)
def test_priority_none(text):
    assert priority_signal(normalize_text(text)) == (None, [])


def test_urgent_wins_over_high():
    found, rules = priority_signal(normalize_text("URGENT: email server down for everyone"))

    assert found == "urgent"
    assert rules == ["outage", "urgency words"]


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("Hello, my laptop does not start and I have a meeting at ten", "en"),
        ("Hallo, mein Laptop startet nicht und ich habe um zehn ein Meeting", "de"),
        ("Bonjour, mon ordinateur ne démarre pas et je suis bloqué dans le bureau", "fr"),
        ("Hola, mi portátil no arranca y tengo una reunión con el jefe", "es"),
        ("laptop boot failure", None),
        ("", None),
    ],
)
def test_detect_language(text, language):
    assert detect_language(normalize_text(text)) == language


def test_dominant_script():
    assert dominant_script(normalize_text("Printer is broken")) == "LATIN"
    assert dominant_script(normalize_text("Принтер не работает, помогите")) == "CYRILLIC"
    assert dominant_script(normalize_text("打印机坏了")) == "CJK"
    assert dominant_script(normalize_text("Printer broken, see 打")) == "LATIN"


def test_basic_guards():
    assert basic_guards("") == ["text is empty"]
    assert basic_guards("numtoken numtoken numtoken") == [
        "text is too short (0 words, at least 3 needed)"
    ]
    assert basic_guards("printer broken") == ["text is too short (2 words, at least 3 needed)"]
    assert basic_guards("printer broken again") == []


@pytest.fixture
def explainer():
    profile = TextProfile(
        word_pattern="[a-z0-9_][a-z0-9_]+",
        vocabulary=frozenset({"printer", "toner", "laptop", "password", "reset", "broken"}),
        min_known_share=0.5,
        languages=["en"],
    )
    weights = {
        "Hardware": {"printer": 2.0, "toner": 1.5, "printer toner": 3.0, "broken": 0.5},
        "Access": {"password": 2.0, "password reset": 4.0},
    }
    return Explainer(profile, weights)


def test_terms_rank_by_weight(explainer):
    words = explainer.words(normalize_text("The printer toner is empty, printer broken"))

    assert explainer.terms(words, "Hardware") == ["printer", "printer toner", "toner", "broken"]
    assert explainer.terms(words, "Hardware", limit=2) == ["printer", "printer toner"]
    assert explainer.terms(words, "Access") == []
    assert explainer.terms(words, "Unknown queue") == []


def test_bigram_terms(explainer):
    words = explainer.words(normalize_text("password reset needed"))

    assert explainer.terms(words, "Access") == ["password reset", "password"]


def test_known_share_skips_stop_words(explainer):
    words = explainer.words("the printer and the toner are broken")

    assert explainer.known_share(words) == (1.0, 3)


def test_guard_unfamiliar_text(explainer):
    text = normalize_text("quarterly dividend reinvestment brokerage statement printer")

    guards = explainer.guards(text, explainer.words(text))

    assert guards == [
        "text is unlike the training data (17% of its words are known to the model, "
        "at least 50% expected)"
    ]


def test_guard_other_language(explainer):
    text = normalize_text("Der Drucker ist kaputt und ich kann nicht drucken, bitte helfen Sie mir")

    guards = explainer.guards(text, explainer.words(text))

    assert "text looks German, the model was trained on English" in guards


def test_guard_other_script(explainer):
    text = normalize_text("Принтер не работает, помогите пожалуйста")

    guards = explainer.guards(text, explainer.words(text))

    assert guards == ["text is in Cyrillic script, which the model was not trained on"]


def test_guard_familiar_english(explainer):
    text = normalize_text("The printer is broken and the toner is empty")

    assert explainer.guards(text, explainer.words(text)) == []


def test_explainer_rejects_other_version(tmp_path: Path):
    (tmp_path / "terms.json").write_text(json.dumps({"model_version": "a-1"}))

    with pytest.raises(ValueError, match="belongs to model version a-1"):
        Explainer.load(tmp_path, "b-2")


def test_shipped_model_explains_and_guards():
    classifier = Classifier.load()

    printer = classifier.predict("My laptop screen is broken and the keyboard does not work")
    german = classifier.predict(
        "Hallo, mein Laptop ist kaputt und ich kann nicht arbeiten, bitte helfen Sie mir"
    )
    outage = classifier.predict("Email server down for everyone in the office since 9:00")

    assert printer.queue == "Hardware"
    assert printer.terms
    assert set(printer.terms) <= {"laptop", "screen", "broken", "keyboard", "work"} | {
        term for term in printer.terms if " " in term
    }
    assert printer.guards == []
    assert any("German" in guard for guard in german.guards)
    assert not german.meets_threshold
    assert german.priority_signal == "high"
    assert outage.priority_signal == "urgent"
    assert outage.priority_rules == ["outage"]
    assert outage.to_dict()["priority_rules"] == ["outage"]
