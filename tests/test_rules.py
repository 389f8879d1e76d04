"""Account rules: validation errors that name the rule and the position, evaluation over
ticket, prediction and account, and the merged actions."""

from __future__ import annotations

from datetime import date

import pytest

from model.inference import Prediction
from plugin.context import AccountContext, Project, Renewal
from plugin.rules import PolicyError, RuleOutcome, RuleSet, combine
from plugin.tickets import Party, Ticket


def prediction(queue="Access", confidence=0.91, **values) -> Prediction:
    return Prediction(
        queue=queue,
        confidence=confidence,
        threshold=0.8,
        alternatives=[("Billing", 0.05)],
        probabilities={queue: confidence, "Billing": 0.05},
        terms=["password"],
        priority_signal=values.pop("priority_signal", None),
        model_version="test",
        **values,
    )


def ticket(**values) -> Ticket:
    defaults = {
        "helpdesk": "zendesk",
        "id": "101",
        "subject": "Payroll export failed again",
        "description": "The nightly export to the bank stopped after the connector update.",
        "requester": Party(email="pat@northwind.example"),
        "tags": ["payroll"],
    }
    defaults.update(values)
    return Ticket(**defaults)


def rules(*entries) -> RuleSet:
    return RuleSet.from_policy(list(entries))


def error_for(entry) -> str:
    with pytest.raises(PolicyError) as caught:
        RuleSet.from_policy([{"name": "first", "condition": "true", "tags": ["x"]}, entry])
    return str(caught.value)


# Validation


def test_syntax_error_names_rule_and_position():
    message = error_for(
        {"name": "go-live", "condition": "account.tier == 'Premium' and\n  )", "escalate": True}
    )
    assert (
        message == "rule 2 'go-live': invalid condition at line 2, column 3: syntax error near ')'"
    )


def test_syntax_error_at_end():
    message = error_for({"name": "cut", "condition": "account.tier ==", "escalate": True})
    assert (
        message == "rule 2 'cut': invalid condition at line 1, column 16: syntax error at the end"
    )


def test_unknown_field_suggests_the_right_one():
    message = error_for({"name": "tier", "condition": "account.teir == 'Gold'", "escalate": True})
    assert message == (
        "rule 2 'tier': invalid condition at line 1, column 9: "
        "unknown field 'teir' (did you mean 'tier'?)"
    )


def test_unknown_name_is_reported():
    message = error_for(
        {"name": "who", "condition": "prediction.queue == 'A' or customer.x", "escalate": True}
    )
    assert message == (
        "rule 2 'who': invalid condition at line 1, column 28: "
        "unknown name 'customer', expected ticket, prediction or account"
    )


def test_nullable_field_needs_a_default():
    message = error_for(
        {"name": "late", "condition": "account.days_to_go_live <= 3", "escalate": True}
    )
    assert message.startswith("rule 2 'late': invalid condition: data type mismatch")
    assert "??" in message


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"condition": "true", "escalate": True}, "rule 2: name is missing"),
        ({"name": "first", "condition": "true", "escalate": True}, "same name"),
        ({"name": "n", "escalate": True}, "rule 2 'n': condition is missing"),
        ({"name": "n", "condition": "true"}, "rule 2 'n': no action"),
        ({"name": "n", "condition": "true", "priority": "p1"}, "priority 'p1' is not one of"),
        ({"name": "n", "condition": "true", "escalate": "yes"}, "escalate must be true or false"),
        ({"name": "n", "condition": "true", "tags": ["two words"]}, "tags must be a list"),
        ({"name": "n", "condition": "true", "forbid_queue": [1]}, "forbid_queue must be"),
        ({"name": "n", "condition": "true", "follow_up": {"note": "x"}}, "follow_up needs a team"),
        (
            {"name": "n", "condition": "true", "follow_up": {"team": "cs", "due": 1}},
            "follow_up has unknown key(s) due",
        ),
        ({"name": "n", "condition": "true", "actions": {}}, "unknown key(s) actions"),
        (
            {"name": "n", "condition": "true", "note": "Owner {account.owner}"},
            "rule 2 'n': note: placeholder {account.owner}: unknown field 'owner'",
        ),
        (
            {"name": "n", "condition": "true", "follow_up": {"team": "cs", "note": "{acct.x}"}},
            "follow_up.note: placeholder {acct.x}: unknown name 'acct'",
        ),
    ],
)
def test_invalid_rules_are_rejected(entry, expected):
    assert expected in error_for(entry)


def test_rules_must_be_a_list():
    with pytest.raises(PolicyError, match=r"array of tables"):
        RuleSet.from_policy({"name": "x"})


def test_disabled_rule_is_skipped():
    ruleset = rules(
        {"name": "off", "condition": "true", "enabled": False, "escalate": True},
        {"name": "on", "condition": "true", "tags": ["seen"]},
    )
    assert len(ruleset) == 1
    assert bool(RuleSet.from_policy([])) is False


# Evaluation


def test_fired_rules_in_policy_order_with_notes():
    ruleset = rules(
        {
            "name": "go-live weekend",
            "condition": (
                "prediction.queue == 'Access' and (account.project&.business_critical ?? false)"
                " and (account.days_to_go_live ?? 99) <= 3"
            ),
            "priority": "urgent",
            "force_queue": "IdentityEngineering",
            "escalate": True,
            "note": "Delivery manager: {account.delivery_manager}, project {account.project.name}",
        },
        {"name": "never", "condition": "account.tier == 'Basic'", "tags": ["basic"]},
        {
            "name": "premium",
            "condition": "account.tier in ['Premium', 'Enterprise']",
            "tags": ["premium"],
        },
    )
    account = AccountContext(
        tier="Premium",
        delivery_manager="Dana Delivery",
        project=Project(id="801", name="Plant Lyon cutover", business_critical=True),
        days_to_go_live=1,
    )
    outcomes = ruleset.evaluate(ticket(), prediction(), account)
    assert [outcome.name for outcome in outcomes] == ["go-live weekend", "premium"]
    assert outcomes[0].actions == {
        "priority": "urgent",
        "force_queue": "IdentityEngineering",
        "escalate": True,
        "note": "Delivery manager: Dana Delivery, project Plant Lyon cutover",
    }
    assert (
        outcomes[0]
        .describe()
        .endswith("priority urgent, queue IdentityEngineering, escalate, note added")
    )
    assert outcomes[1].actions == {"tags": ["premium"]}


def test_text_and_dates_in_conditions():
    ruleset = rules(
        {
            "name": "renewal billing",
            "condition": (
                "prediction.queue == 'Billing'"
                " and (account.renewal&.stage ?? '') =~ 'Negotiation.*'"
                " and (account.renewal&.close_date ?? d'2999-01-01') < d'2027-01-01'"
                " and ticket.text =~~ 'invoice'"
            ),
            "priority": "high",
            "follow_up": {"team": "customer-success", "note": "Renewal {account.renewal.name}"},
        }
    )
    account = AccountContext(
        renewal=Renewal(
            id="006",
            name="Northwind 2027",
            stage="Negotiation/Review",
            close_date=date(2026, 12, 18),
        )
    )
    billing_ticket = ticket(subject="Question about an invoice", description="")
    fired = ruleset.evaluate(billing_ticket, prediction("Billing"), account)
    assert fired == [
        RuleOutcome(
            "renewal billing",
            {
                "priority": "high",
                "follow_up": {"team": "customer-success", "note": "Renewal Northwind 2027"},
            },
            ruleset.rules[0].condition,
        )
    ]
    assert ruleset.evaluate(billing_ticket, prediction("Access"), account) == []
    assert ruleset.evaluate(billing_ticket, prediction("Billing"), AccountContext()) == []


def test_missing_account_reads_as_empty():
    ruleset = rules(
        {
            "name": "overdue",
            "condition": "(account.overdue_invoices ?? 0) > 0",
            "require_confirmation": True,
        },
        {"name": "unknown account", "condition": "account.account_id == null", "tags": ["new"]},
    )
    outcomes = ruleset.evaluate(ticket(), prediction(), None)
    assert [outcome.name for outcome in outcomes] == ["unknown account"]


def test_dict_views_are_accepted():
    ruleset = rules(
        {
            "name": "payroll",
            "condition": (
                "'payroll' in ticket.tags and prediction.confidence > 0.5"
                " and account.tier == 'Mid-Market'"
            ),
            "force_queue": "IntegrationEngineering",
            "note": "Common cause: payroll connector update for {account.account_name}",
        }
    )
    outcomes = ruleset.evaluate(
        ticket().to_dict(),
        {"queue": "Integrations", "confidence": 0.7, "terms": [], "guards": []},
        AccountContext(tier="Mid-Market", account_name="Contoso").to_dict(),
    )
    assert outcomes[0].actions["note"] == ("Common cause: payroll connector update for Contoso")


def test_placeholder_of_empty_field_reads_not_recorded():
    ruleset = rules({"name": "n", "condition": "true", "note": "DM {account.delivery_manager}"})
    outcome = ruleset.evaluate(ticket(), prediction(), AccountContext())[0]
    assert outcome.actions["note"] == "DM (not recorded)"


def test_failures_are_visible_to_conditions():
    ruleset = rules(
        {
            "name": "erp down",
            "condition": "[f for f in account.failures if f['source'] == 'netsuite']",
            "require_confirmation": True,
        }
    )
    account = AccountContext(failures=[{"source": "netsuite", "error": "timed out after 6 s"}])
    assert [o.name for o in ruleset.evaluate(ticket(), prediction(), account)] == ["erp down"]
    assert ruleset.evaluate(ticket(), prediction(), AccountContext()) == []


def test_combine_merges_actions():
    merged = combine(
        [
            RuleOutcome("a", {"priority": "high", "tags": ["x"], "force_queue": "Billing"}),
            RuleOutcome(
                "b",
                {
                    "priority": "urgent",
                    "tags": ["x", "y"],
                    "force_queue": "Other",
                    "forbid_queue": ["Access"],
                    "follow_up": {"team": "customer-success", "note": "call"},
                    "note": "see renewal",
                    "escalate": True,
                },
            ),
            RuleOutcome("c", {"priority": "low", "require_confirmation": True}),
        ]
    )
    assert merged == {
        "priority": "urgent",
        "force_queue": "Billing",
        "forbid_queue": ["Access"],
        "tags": ["x", "y"],
        "escalate": True,
        "follow_ups": [{"rule": "b", "team": "customer-success", "note": "call"}],
        "require_confirmation": True,
        "notes": ["see renewal"],
    }


def test_describe_joins_condition_lines():
    outcome = RuleOutcome("r", {"tags": ["a"]}, "account.tier == 'Premium'\n  and true")
    assert outcome.describe() == "matched account.tier == 'Premium' and true: tags a"
