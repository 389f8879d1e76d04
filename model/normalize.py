"""Text normalisation shared by training and serving.

The exported ONNX graph tokenises the string it is given and does nothing else, so every
cleaning step lives here and both paths call :func:`normalize_text` before the model. The
output has no control characters, because the graph pads batches with ``\\x01``. It has no
repeated whitespace either, because the graph does not collapse whitespace the way
scikit-learn's tokenizer does.
"""

from __future__ import annotations

import html
import re
import unicodedata

EMAIL_TOKEN = " emailaddr "
URL_TOKEN = " urladdr "
NUMBER_TOKEN = " numtoken "

_BLOCK_TAGS = re.compile(r"<\s*(script|style|head)\b[^>]*>.*?<\s*/\s*\1\s*>", re.I | re.S)
_QUOTE_TAGS = re.compile(r"<\s*blockquote\b[^>]*>.*?<\s*/\s*blockquote\s*>", re.I | re.S)
_LINE_BREAK_TAGS = re.compile(r"<\s*(br|/p|/div|/li|/tr|/h[1-6]|p|div|li|tr)\b[^>]*>", re.I)
_ANY_TAG = re.compile(r"<[a-zA-Z/!][^>]*>")
_HTML_HINT = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*\b[^>]*>")

# Lines that start the quoted copy of an earlier message: everything from there on is cut.
_REPLY_MARKERS = (
    re.compile(r"^\s*(on|am)\s.{0,200}\b(wrote|schrieb)\b.{0,120}:\s*$", re.I),
    re.compile(r"^\s*-{2,}\s*(original message|ursprüngliche nachricht)\s*-{2,}\s*$", re.I),
    re.compile(r"^\s*_{8,}\s*$"),
)
# Header lines of a quoted or forwarded e-mail (Outlook style, English and German).
_HEADER_LINE = re.compile(
    r"^\s*(from|von|sent|gesendet|to|an|cc|bcc|subject|betreff|date|datum)\s*:", re.I
)
_HEADER_START = re.compile(r"^\s*(from|von)\s*:", re.I)
_SIGNATURE_MARKER = re.compile(r"^\s*--\s*$")

_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"']+", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Whole numbers only: tokens such as "win10" or "o365" keep their digits.
_NUMBER = re.compile(r"(?<!\w)\d+(?:[.,:/-]\d+)*(?!\w)")
_ANY_DIGIT = re.compile(r"\d")


def normalize_text(text: str) -> str:
    """Clean a ticket text into the form the model was trained on.

    Strips HTML, cuts quoted replies, forwarded headers and signatures, folds e-mail
    addresses, URLs and numbers into the placeholder words ``emailaddr``, ``urladdr`` and
    ``numtoken``, folds accents to ASCII, lower-cases and collapses whitespace.
    """
    if not text:
        return ""
    if "Ã" in text or "Â" in text:
        text = repair_mojibake(text)
    if _HTML_HINT.search(text):
        text = strip_html(text)
    text = cut_quoted(text)
    text = unicodedata.normalize("NFKC", text)
    # The substring checks skip regular expressions that cannot match, which saves most of
    # the time on plain tickets.
    if "://" in text or "www." in text.lower():
        text = _URL.sub(URL_TOKEN, text)
    if "@" in text:
        text = _EMAIL.sub(EMAIL_TOKEN, text)
    if _ANY_DIGIT.search(text):
        text = _NUMBER.sub(NUMBER_TOKEN, text)
    text = fold_accents(text.lower())
    text = _drop_control_characters(text)
    return " ".join(text.split())


def strip_html(text: str) -> str:
    """Return the visible text of an HTML fragment, one line per block element."""
    text = _BLOCK_TAGS.sub(" ", text)
    text = _QUOTE_TAGS.sub("\n", text)
    text = _LINE_BREAK_TAGS.sub("\n", text)
    text = _ANY_TAG.sub(" ", text)
    return html.unescape(text)


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as Windows-1252 or Latin-1 (``rÃ¼ckruf`` to ``rückruf``).

    Returns the text unchanged when it does not round-trip, which is the case for text that
    really contains these letters.
    """
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
    return text


def cut_quoted(text: str) -> str:
    """Remove quoted lines and cut the text at the first reply, forward or signature marker.

    A header block at the very top (a forwarded mail that became the ticket) is dropped
    and the body below it kept, because cutting there would leave nothing.
    """
    kept_lines: list[str] = []
    in_top_header = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            continue
        has_content = any(part.strip() for part in kept_lines)
        if not has_content and (_HEADER_START.match(line) or in_top_header):
            in_top_header = bool(_HEADER_LINE.match(line))
            if in_top_header:
                continue
        if has_content and (_HEADER_START.match(line) or _SIGNATURE_MARKER.match(line)):
            break
        if any(marker.match(line) for marker in _REPLY_MARKERS):
            if has_content:
                break
            continue
        kept_lines.append(line)
    return "\n".join(kept_lines)


def fold_accents(text: str) -> str:
    """Replace accented Latin letters by their base letter (``ü`` to ``u``, ``ß`` to ``ss``)."""
    text = text.replace("ß", "ss")
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _drop_control_characters(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(
        " " if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co") else ch
        for ch in text
    )
