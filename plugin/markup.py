"""Plain text from Jira's two description formats: wiki markup and Atlassian Document Format.

Jira REST v2 (and the admin webhooks, which send v2 issues) returns descriptions and
comments as wiki markup. REST v3 and many automation bodies carry Atlassian Document Format
(ADF), a JSON tree. The classifier needs neither the markup nor the tree, only the words,
so both are reduced to text with line breaks between blocks.
"""

from __future__ import annotations

import re
from typing import Any

# Block macros whose body is kept and whose delimiters are dropped: {code:java} ... {code}.
_BLOCK_MACRO = re.compile(r"\{(code|noformat|quote|panel|color)(?::[^}]*)?\}", re.IGNORECASE)
_HEADING = re.compile(r"^\s*h[1-6]\.\s*", re.MULTILINE)
_BLOCKQUOTE = re.compile(r"^\s*bq\.\s*", re.MULTILINE)
_LIST_MARKER = re.compile(r"^\s*[*#-]+\s+", re.MULTILINE)
_TABLE_CELLS = re.compile(r"\|\|?")
_RULE = re.compile(r"^\s*-{4,}\s*$", re.MULTILINE)
_IMAGE = re.compile(r"![^!\s][^!\n]*!")
_MENTION = re.compile(r"\[~(?:accountid:)?([^\]]+)\]")
_LINK_WITH_TEXT = re.compile(r"\[([^|\]\n]+)\|([^\]\n]+)\]")
_LINK = re.compile(r"\[([^\]\n]+)\]")
_MONOSPACE = re.compile(r"\{\{(.+?)\}\}")
_CITATION = re.compile(r"\?\?(.+?)\?\?")
# Inline emphasis: *strong*, _emphasis_, -deleted-, +inserted+, ^superscript^, ~subscript~.
# The marker must sit at a word boundary so "2*3*4" and "file_name_here" stay as they are.
_EMPHASIS = re.compile(r"(?<![\w*_\-+^~])([*_\-+^~])(?=\S)(.+?)(?<=\S)\1(?![\w*_\-+^~])")
_ESCAPE = re.compile(r"\\([*_\-+^~{}\[\]|!?#])")
_LINE_BREAK = re.compile(r"\\\\")
_PARKED = 0xF0000
_PARKED_CHAR = re.compile("[\U000f0000-\U000f007f]")
_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def wiki_to_text(markup: str | None) -> str:
    """Convert Jira wiki markup to plain text, keeping link texts, code and table cells."""
    if not markup:
        return ""
    text = markup.replace("\r\n", "\n").replace("\r", "\n")
    # Escaped markup characters are parked in the private use area, so that no rule below
    # reads them as markup, and restored at the end.
    text = _ESCAPE.sub(lambda match: chr(_PARKED + ord(match.group(1))), text)
    text = _BLOCK_MACRO.sub("\n", text)
    text = _LINE_BREAK.sub("\n", text)
    text = _RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _IMAGE.sub("", text)
    # Mentions carry an account id, which is noise for the classifier.
    text = _MENTION.sub("", text)
    text = _LINK_WITH_TEXT.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _MONOSPACE.sub(r"\1", text)
    text = _CITATION.sub(r"\1", text)
    text = _LIST_MARKER.sub("", text)
    text = _TABLE_CELLS.sub(" ", text)
    # Nested emphasis (*_both_*) needs a second pass once the outer markers are gone.
    for _ in range(2):
        text = _EMPHASIS.sub(r"\2", text)
    text = _PARKED_CHAR.sub(lambda match: chr(ord(match.group(0)) - _PARKED), text)
    return _tidy(text)


# ADF nodes that end a line of text; the others are inline.
_ADF_BLOCKS = {
    "paragraph",
    "heading",
    "blockquote",
    "codeBlock",
    "listItem",
    "tableRow",
    "panel",
    "rule",
    "mediaSingle",
    "mediaGroup",
    "expand",
    "nestedExpand",
    "decisionItem",
    "taskItem",
}


def adf_to_text(document: dict[str, Any] | None) -> str:
    """Convert an Atlassian Document Format tree to plain text, one line per block node."""
    if not document:
        return ""
    parts: list[str] = []
    _walk_adf(document, parts)
    return _tidy("".join(parts))


def _walk_adf(node: Any, parts: list[str]) -> None:
    if isinstance(node, list):
        for child in node:
            _walk_adf(child, parts)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    attrs = node.get("attrs") or {}

    if kind == "text":
        parts.append(str(node.get("text", "")))
        return
    if kind == "hardBreak":
        parts.append("\n")
        return
    if kind in ("mention", "emoji", "status"):
        parts.append(str(attrs.get("text") or attrs.get("shortName") or ""))
        return
    if kind in ("inlineCard", "blockCard", "embedCard"):
        parts.append(str(attrs.get("url") or ""))
        return
    if kind == "date":
        parts.append(str(attrs.get("timestamp") or ""))
        return

    if kind == "tableCell" or kind == "tableHeader":
        # A cell's paragraphs stay on the row's line, so a table row reads as one line.
        cell: list[str] = []
        _walk_adf(node.get("content"), cell)
        parts.append(" ".join("".join(cell).split()) + " ")
        return

    _walk_adf(node.get("content"), parts)
    # A list item's paragraph has already ended the line.
    if kind in _ADF_BLOCKS and not (parts and parts[-1].endswith("\n")):
        parts.append("\n")


def description_to_text(value: Any) -> str:
    """Convert a description in either format to text: ADF when it is a JSON object."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return adf_to_text(value)
    return wiki_to_text(str(value))


def _tidy(text: str) -> str:
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
