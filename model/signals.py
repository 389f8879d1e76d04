"""Rules over normalised ticket text: priority keywords, language and script.

All functions take the output of normalize_text (lower case, accents folded to ASCII, numbers
replaced by ``numtoken``), so German words appear here without umlauts: "stoerung" and
"storung" both stand for "Störung".
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

URGENT = "urgent"
HIGH = "high"

# Rules as (signal, rule name, phrases). "urgent" rules name events that hurt many people or
# the business at once; "high" rules are words of urgency that one requester uses. A phrase
# matches whole words in order; "{a,b}" stands for either word and "{a,}" for "a" or nothing.
_PRIORITY_RULES: list[tuple[str, str, list[str]]] = [
    (
        URGENT,
        "outage",
        [
            "outage",
            "outages",
            "{service,system,server,site,network,website,portal,vpn,erp,sap,email,internet} "
            "{is ,are ,}{down,unavailable}",
            "{systems,servers,services} {are ,}down",
            "down for {all,everyone,everybody}",
            "{nobody,noone} can {login,log,work,access,connect}",
            "no one can {login,log,work,access,connect}",
            "ausfall",
            "totalausfall",
            "systemausfall",
            "serverausfall",
            "netzwerkausfall",
            "stoerung",
            "storung",
            "nicht {mehr ,}erreichbar",
        ],
    ),
    (
        URGENT,
        "production down",
        [
            "{production,prod} {is ,}{down,stopped,halted}",
            "production outage",
            "production line {is ,}stopped",
            "produktion {steht,gestoppt}",
            "produktionsausfall",
            "betrieb steht",
            "stillstand",
        ],
    ),
    (
        URGENT,
        "security",
        [
            "security {incident,breach}",
            "data {breach,leak}",
            "{account,password,mailbox,laptop,computer,system,server} {is ,was ,has been ,}"
            "{hacked,compromised}",
            "{hacked,compromised} {account,password,mailbox}",
            "been hacked",
            "ransomware",
            "malware",
            "trojan",
            "phishing",
            "virus {found,detected,infection,alert}",
            "infected with",
            "unauthorized {access,login}",
            "unauthorised {access,login}",
            "sicherheitsvorfall",
            "sicherheitslucke",
            "sicherheitsluecke",
            "gehackt",
            "schadsoftware",
            "datenleck",
            "datenpanne",
        ],
    ),
    (
        URGENT,
        "data loss",
        [
            "data loss",
            "lost {all ,}{my ,our ,the ,}{data,files,emails}",
            "{data,files,emails} {were ,was ,got ,have been ,}{deleted,lost,corrupted}",
            "datenverlust",
            "daten {sind ,wurden ,}{weg,verloren,geloscht,geloescht}",
        ],
    ),
    (
        URGENT,
        "legal",
        [
            "legal action",
            "lawsuit",
            "lawyer",
            "attorney",
            "court order",
            "subpoena",
            "gdpr",
            "anwalt",
            "klage",
            "rechtliche schritte",
            "gericht",
            "dsgvo",
            "abmahnung",
        ],
    ),
    (
        HIGH,
        "urgency words",
        [
            "urgent",
            "urgently",
            "asap",
            "as soon as possible",
            "critical",
            "emergency",
            "immediately",
            "blocker",
            "{cannot,can't,cant,unable to} work",
            "can not work",
            "deadline",
            "dringend",
            "eilig",
            "sofort",
            "kritisch",
            "notfall",
            "schnellstmoglich",
            "schnellstmoeglich",
            "so schnell wie {moglich,moeglich}",
            "kann nicht arbeiten",
        ],
    ),
]
_WORD = re.compile(r"[a-z0-9']+")


def _expand(phrase: str) -> list[tuple[str, ...]]:
    """Expand ``{a,b}`` alternatives of a phrase into word tuples."""
    match = re.search(r"\{([^}]*)\}", phrase)
    if not match:
        return [tuple(phrase.split())]
    head, tail = phrase[: match.start()], phrase[match.end() :]
    expanded = []
    for option in match.group(1).split(","):
        expanded.extend(_expand(head + option + tail))
    return [words for words in expanded if words]


def _index_rules() -> dict[str, list[tuple[tuple[str, ...], int]]]:
    """Map each phrase's first word to (phrase words, rule index), for one pass over a text."""
    index: dict[str, list[tuple[tuple[str, ...], int]]] = {}
    for position, (_, _, phrases) in enumerate(_PRIORITY_RULES):
        for phrase in phrases:
            for words in _expand(phrase):
                index.setdefault(words[0], []).append((words, position))
    return index


_PHRASES_BY_FIRST_WORD = _index_rules()


# Frequent function words per language, accents folded like normalize_text does.
def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP_WORDS: dict[str, frozenset[str]] = {
    "en": _words(
        "the and is are to of in for it on with please not this that my we you can be have "
        "was i me our your from at by an as do does has but or if will would could there "
        "they what when which"
    ),
    "de": _words(
        "der die das und ist sind nicht ich sie mit fur auf bitte ein eine einen zu den dem "
        "von wir es bei kann konnen haben hat wird werden auch noch mein meine ihr ihre uns "
        "wie oder aber wenn dass nach vielen dank gruss grusse"
    ),
    "fr": _words(
        "le la les et est sont pas je vous nous avec pour sur un une des du de ce cette "
        "mon ma mes qui que dans merci bonjour ne il elle au aux"
    ),
    "es": _words(
        "el la los las y es son no yo usted con para por un una unos del de que en mi "
        "gracias hola se lo al como pero esta este"
    ),
    "it": _words(
        "il lo la gli le e non io con per un una del della di che in mio grazie ciao "
        "sono al come ma questo questa"
    ),
    "nl": _words(
        "de het een en is zijn niet ik u jij we met voor op van dat die in mijn bedankt "
        "graag kan wordt ook maar als"
    ),
    "pt": _words(
        "o a os as e nao eu voce com para por um uma do da de que em meu obrigado ola "
        "se no na como mas este esta"
    ),
}
LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "nl": "Dutch",
    "pt": "Portuguese",
}
_LANGUAGES_OF_WORD: dict[str, tuple[str, ...]] = {}
for _language, _words in STOP_WORDS.items():
    for _word in _words:
        _LANGUAGES_OF_WORD[_word] = (*_LANGUAGES_OF_WORD.get(_word, ()), _language)


def is_stop_word(word: str) -> bool:
    """Whether ``word`` is a function word of one of the languages in STOP_WORDS."""
    return word in _LANGUAGES_OF_WORD


# A language is detected when at least this many of its stop words occur and they make up
# at least this share of the words. Below that, the text is too short or has no stop words.
MIN_STOP_WORDS = 3
MIN_STOP_WORD_SHARE = 0.12
# Letters outside the Latin script that make a text "non-Latin".
MIN_SCRIPT_SHARE = 0.3


def priority_signal(normalized: str) -> tuple[str | None, list[str]]:
    """Return the strongest priority signal in the text and the names of the rules that matched.

    The signal is ``"urgent"`` when an outage, production, security, data loss or legal rule
    matches, ``"high"`` for words of urgency alone, and None otherwise.
    """
    words = _WORD.findall(normalized)
    matched: set[int] = set()
    for start, word in enumerate(words):
        for phrase, rule in _PHRASES_BY_FIRST_WORD.get(word, ()):
            if rule not in matched and tuple(words[start : start + len(phrase)]) == phrase:
                matched.add(rule)
    if not matched:
        return None, []
    names = [_PRIORITY_RULES[rule][1] for rule in sorted(matched)]
    signals = {_PRIORITY_RULES[rule][0] for rule in matched}
    return (URGENT if URGENT in signals else HIGH), names


def detect_language(normalized: str) -> str | None:
    """Return the language code whose stop words dominate the text, or None when unsure."""
    words = normalized.split()
    if len(words) < MIN_STOP_WORDS:
        return None
    hits: dict[str, int] = {}
    for word in words:
        for language in _LANGUAGES_OF_WORD.get(word, ()):
            hits[language] = hits.get(language, 0) + 1
    if not hits:
        return None
    language = max(hits, key=hits.__getitem__)
    count = hits.pop(language)
    if count < MIN_STOP_WORDS or count / len(words) < MIN_STOP_WORD_SHARE:
        return None
    # Two languages with about as many hits: short words such as "de" or "in" are shared.
    if hits and max(hits.values()) >= 0.8 * count:
        return None
    return language


def dominant_script(normalized: str) -> str:
    """Return the script of most letters: ``"LATIN"``, ``"CYRILLIC"``, ``"CJK"`` and so on."""
    if normalized.isascii():
        return "LATIN"
    scripts = Counter()
    letters = 0
    for ch in normalized:
        if not ch.isalpha():
            continue
        letters += 1
        if ch.isascii():
            scripts["LATIN"] += 1
            continue
        name = unicodedata.name(ch, "")
        scripts[name.split(" ", 1)[0] if name else "UNKNOWN"] += 1
    if not letters:
        return "LATIN"
    script, count = max(
        ((name, count) for name, count in scripts.items() if name != "LATIN"),
        key=lambda item: item[1],
        default=("LATIN", 0),
    )
    return script if count / letters >= MIN_SCRIPT_SHARE else "LATIN"
