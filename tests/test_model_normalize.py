"""normalize_text: the cleaning shared by training and serving."""

from __future__ import annotations

import pytest

from model.normalize import normalize_text


def test_html_is_stripped():
    text = "<html><head><style>p {color: red}</style></head><body><p>Printer&nbsp;<b>jammed</b></p>"

    assert normalize_text(text) == "printer jammed"


def test_blockquote_is_removed():
    text = "<div>VPN fails</div><blockquote>earlier message about printers</blockquote>"

    assert normalize_text(text) == "vpn fails"


def test_quoted_lines_are_removed():
    text = "Still broken.\n> Did you restart it?\n>> yes\nPlease help."

    assert normalize_text(text) == "still broken. please help."


@pytest.mark.parametrize(
    "marker",
    [
        "On Mon, 3 Jun 2024 at 10:12, Jane Roe <jane@example.com> wrote:",
        "Am 03.06.2024 um 10:12 schrieb Erika Muster <erika@example.com>:",
        "-----Original Message-----",
        "-----Ursprüngliche Nachricht-----",
        "From: Jane Roe",
        "Von: Erika Muster",
        "--",
        "-- ",
    ],
)
def test_reply_markers_cut_the_rest(marker):
    text = f"Laptop screen flickers\n{marker}\nold text about mailbox quota"

    assert normalize_text(text) == "laptop screen flickers"


def test_forward_header_on_top_keeps_body():
    text = "From: Jane Roe\nSent: Monday\nTo: Service Desk\nSubject: VPN\n\nVPN drops every hour"

    assert normalize_text(text) == "vpn drops every hour"


def test_placeholders():
    text = "Mail jane.roe@example.com, see https://intranet.example.com/kb?id=7 ticket 4711"

    assert normalize_text(text) == "mail emailaddr , see urladdr ticket numtoken"


def test_numbers_inside_words_are_kept():
    assert normalize_text("Win10 and O365 on port 8080, version 2.3.1") == (
        "win10 and o365 on port numtoken , version numtoken"
    )


def test_accents_case_and_whitespace():
    assert normalize_text("  Drucker   GRÜN\t\tStraße\r\n\u00a0Ärger ") == (
        "drucker grun strasse arger"
    )


def test_mojibake_is_repaired():
    assert normalize_text("bitte um rÃ¼ckruf, mit freundlichen grÃ¼ssen") == (
        "bitte um ruckruf, mit freundlichen grussen"
    )


def test_real_a_tilde_is_kept():
    assert normalize_text("São Paulo office: Ã is a letter") == "sao paulo office: a is a letter"


def test_control_characters_become_spaces():
    assert normalize_text("disk\x01full\x00now\u200b!") == "disk full now !"


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "<p></p>", "> only a quote"])
def test_empty_results(text):
    assert normalize_text(text) == ""


def test_idempotent():
    once = normalize_text("<p>Reset MFA for bob@example.com – 3 attempts</p>")

    assert normalize_text(once) == once
