"""Jira wiki markup and Atlassian Document Format reduced to classifier text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plugin.markup import adf_to_text, description_to_text, wiki_to_text

FIXTURES = Path(__file__).parent / "fixtures" / "jira"


@pytest.mark.parametrize(
    ("markup", "text"),
    [
        ("h2. VPN cannot connect", "VPN cannot connect"),
        (
            "*bold* _italic_ -deleted- +inserted+ ^sup^ ~sub~",
            "bold italic deleted inserted sup sub",
        ),
        ("*_both_*", "both"),
        ("see {{error 809}} and ??a citation??", "see error 809 and a citation"),
        ("open [the portal|https://portal.example.com/x] now", "open the portal now"),
        ("raw [https://portal.example.com] link", "raw https://portal.example.com link"),
        ("thanks [~accountid:5b10a2844c20165700ede21g] for it", "thanks for it"),
        ("* one\n** two\n# three\n- four", "one\ntwo\nthree\nfour"),
        ("||Host||IP||\n|vpn1|10.0.0.1|", "Host IP\nvpn1 10.0.0.1"),
        ("{code:bash}ping 10.0.0.1{code}", "ping 10.0.0.1"),
        ("{noformat}\nstack trace\n{noformat}", "stack trace"),
        ("{quote}quoted text{quote}", "quoted text"),
        ("{panel:title=Note}inside{panel}", "inside"),
        ("{color:red}alert{color}", "alert"),
        ("bq. quoted line", "quoted line"),
        ("before\n----\nafter", "before\n\nafter"),
        ("look !screenshot.png|thumbnail! here", "look here"),
        ("line one\\\\line two", "line one\nline two"),
        ("2*3*4 and file_name_here and well-known", "2*3*4 and file_name_here and well-known"),
        ("an escaped \\*star\\*", "an escaped *star*"),
        ("", ""),
    ],
)
def test_wiki_to_text(markup, text):
    assert wiki_to_text(markup) == text


def test_wiki_to_text_none():
    assert wiki_to_text(None) == ""


def test_adf_paragraphs_and_marks():
    payload = json.loads((FIXTURES / "issue_created__automation_adf.json").read_text())
    document = payload["issue"]["fields"]["description"]

    assert adf_to_text(document) == (
        "transfer license user hello left going please transfer his license replaced role\n"
        "best regards senior engineer"
    )


def test_adf_inline_and_block_nodes():
    document = {
        "type": "doc",
        "version": 1,
        "content": [
            {
                "type": "heading",
                "attrs": {"level": 2},
                "content": [{"type": "text", "text": "VPN"}],
            },
            {
                "type": "paragraph",
                "content": [
                    {"type": "mention", "attrs": {"id": "5b10", "text": "@Riley Agent"}},
                    {"type": "text", "text": " cannot connect"},
                    {"type": "hardBreak"},
                    {"type": "emoji", "attrs": {"shortName": ":warning:", "text": "⚠️"}},
                    {"type": "text", "text": " since "},
                    {"type": "date", "attrs": {"timestamp": "1796375551000"}},
                    {"type": "text", "text": " see "},
                    {"type": "inlineCard", "attrs": {"url": "https://status.example.com"}},
                ],
            },
            {
                "type": "bulletList",
                "content": [
                    {
                        "type": "listItem",
                        "content": [
                            {"type": "paragraph", "content": [{"type": "text", "text": "one"}]}
                        ],
                    },
                    {
                        "type": "listItem",
                        "content": [
                            {"type": "paragraph", "content": [{"type": "text", "text": "two"}]}
                        ],
                    },
                ],
            },
            {
                "type": "codeBlock",
                "attrs": {"language": "bash"},
                "content": [{"type": "text", "text": "ping 10.0.0.1"}],
            },
            {
                "type": "table",
                "content": [
                    {
                        "type": "tableRow",
                        "content": [
                            {
                                "type": "tableHeader",
                                "content": [
                                    {
                                        "type": "paragraph",
                                        "content": [{"type": "text", "text": "Host"}],
                                    }
                                ],
                            },
                            {
                                "type": "tableHeader",
                                "content": [
                                    {
                                        "type": "paragraph",
                                        "content": [{"type": "text", "text": "IP"}],
                                    }
                                ],
                            },
                        ],
                    }
                ],
            },
            {"type": "rule"},
            {
                "type": "mediaSingle",
                "content": [{"type": "media", "attrs": {"id": "abc", "type": "file"}}],
            },
            {
                "type": "panel",
                "content": [{"type": "paragraph", "content": [{"type": "text", "text": "fin"}]}],
            },
        ],
    }

    assert adf_to_text(document) == (
        "VPN\n"
        "@Riley Agent cannot connect\n"
        "⚠️ since 1796375551000 see https://status.example.com\n"
        "one\n"
        "two\n"
        "ping 10.0.0.1\n"
        "Host IP\n"
        "fin"
    )


def test_adf_empty():
    assert adf_to_text(None) == ""
    assert adf_to_text({"type": "doc", "version": 1, "content": []}) == ""


def test_description_dispatches_on_type():
    adf = {
        "type": "doc",
        "content": [{"type": "paragraph", "content": [{"type": "text", "text": "a"}]}],
    }

    assert description_to_text(adf) == "a"
    assert description_to_text("*a*") == "a"
    assert description_to_text(None) == ""
