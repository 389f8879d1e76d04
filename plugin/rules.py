"""Account rules from the policy file: a condition over ``ticket``, ``prediction`` and
``account``, and the actions to take when it holds.

Conditions are written in the expression language of the ``rule-engine`` package
(https://zerosteiner.github.io/rule-engine/), which parses them into its own syntax tree
and never calls ``eval``. Names are type-checked when the policy is loaded, so a
misspelled field or a comparison of a possibly empty field is reported by
``deskroute check-config`` with the rule's name and the position in the condition::

    [[rules]]
    name = "go-live weekend"
    condition = "(account.project&.business_critical ?? false) and account.tier == 'Premium'"
    priority = "urgent"
    force_queue = "IdentityEngineering"
    escalate = true
    note = "Delivery manager: {account.delivery_manager}"

Fields that may be empty are nullable: ``&.`` reads through an empty record and ``??``
gives a default (``(account.overdue_invoices ?? 0) > 0``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import rule_engine
from rule_engine import DataType

from plugin.context import PRIORITIES, AccountContext
from plugin.tickets import Ticket

log = logging.getLogger(__name__)

ACTION_KEYS = (
    "priority",
    "force_queue",
    "forbid_queue",
    "tags",
    "escalate",
    "follow_up",
    "require_confirmation",
    "note",
)
RULE_KEYS = ("name", "condition", "enabled", *ACTION_KEYS)
# A placeholder in a note or follow-up: {account.delivery_manager}, {ticket.id}.
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\}")


class PolicyError(ValueError):
    """An invalid policy file; the message names the entry (and for rules, the position)."""


def _read(value: Any, name: str) -> Any:
    """Read ``name`` from a dict or an object; the accessor for condition values."""
    if isinstance(value, Mapping):
        return value.get(name)
    return getattr(value, name, None)


def _prediction_type() -> Any:
    # Declared here, not derived from model.inference.Prediction, so that rules are
    # checked against the same names whatever the classifier class carries.
    nullable = DataType.NULLABLE
    return DataType.OBJECT(
        "Prediction",
        attributes={
            "queue": DataType.STRING,
            "confidence": DataType.FLOAT,
            "threshold": nullable(DataType.FLOAT),
            "priority_signal": nullable(DataType.STRING),
            "predicted_priority": nullable(DataType.STRING),
            "model_version": nullable(DataType.STRING),
            "probabilities": DataType.MAPPING(DataType.STRING, DataType.FLOAT),
            "terms": DataType.ARRAY(DataType.STRING),
            "guards": DataType.ARRAY(DataType.STRING),
        },
        accessor=_read,
    )


def _ticket_type() -> Any:
    base = DataType.OBJECT.from_dataclass("Ticket", Ticket, strict=False)
    attributes = dict(base.attributes)
    # Subject and description joined, as the classifier reads them.
    attributes["text"] = DataType.STRING
    return DataType.OBJECT("Ticket", attributes=attributes, accessor=_read)


def build_context() -> rule_engine.Context:
    """Return the rule-engine context that types ``ticket``, ``prediction`` and ``account``."""
    account = DataType.OBJECT.from_dataclass("Account", AccountContext, strict=False)
    types = {"ticket": _ticket_type(), "prediction": _prediction_type(), "account": account}
    return rule_engine.Context(
        type_resolver=rule_engine.type_resolver_from_dict(types),
        default_timezone="UTC",
        mapping_attribute_lookup=False,
    )


def _line_column(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    return line, column


def _name_offset(text: str, name: str, attribute: bool) -> int | None:
    pattern = (r"(?:\.|&\.)" if attribute else r"(?<![\w.$])") + re.escape(name) + r"\b"
    found = re.search(pattern, text)
    if found is None:
        return None
    return found.start() + (found.group(0).index(name) if attribute else 0)


def describe_condition_error(text: str, exc: rule_engine.errors.EngineError) -> str:
    """Return `` at line L, column C: message`` (or ``: message`` when the library gives
    no position) for a rule-engine error in ``text``."""
    offset: int | None = None
    message = exc.message
    if isinstance(exc, rule_engine.errors.RuleSyntaxError):
        token = exc.token
        offset = token.lexpos if token is not None else len(text)
        near = f" near {token.value!r}" if token is not None else " at the end"
        message = f"syntax error{near}"
    elif isinstance(exc, rule_engine.errors.AttributeResolutionError):
        offset = _name_offset(text, exc.attribute_name, attribute=True)
        message = f"unknown field {exc.attribute_name!r}"
        if exc.suggestion:
            message += f" (did you mean {exc.suggestion!r}?)"
    elif isinstance(exc, rule_engine.errors.SymbolResolutionError):
        offset = _name_offset(text, exc.symbol_name, attribute=False)
        message = f"unknown name {exc.symbol_name!r}, expected ticket, prediction or account"
    if offset is None:
        return f": {message}"
    line, column = _line_column(text, offset)
    return f" at line {line}, column {column}: {message}"


@dataclass
class RuleOutcome:
    """A rule that fired and the actions it requests, in the shape the policy reads."""

    name: str
    actions: dict[str, Any]
    condition: str = ""

    def describe(self) -> str:
        """Return a sentence for the decision's reasons: what matched and what it does."""
        parts = []
        actions = self.actions
        if actions.get("priority"):
            parts.append(f"priority {actions['priority']}")
        if actions.get("force_queue"):
            parts.append(f"queue {actions['force_queue']}")
        if actions.get("forbid_queue"):
            parts.append("never queue " + ", ".join(actions["forbid_queue"]))
        if actions.get("tags"):
            parts.append("tags " + ", ".join(actions["tags"]))
        if actions.get("escalate"):
            parts.append("escalate")
        if actions.get("follow_up"):
            parts.append(f"follow-up for {actions['follow_up']['team']}")
        if actions.get("require_confirmation"):
            parts.append("needs confirmation")
        if actions.get("note"):
            parts.append("note added")
        done = ", ".join(parts) or "no action"
        # Conditions often span lines in the policy file; the reason is one line.
        condition = " ".join(self.condition.split())
        return f"matched {condition}: {done}"


@dataclass
class Rule:
    name: str
    condition: str
    compiled: rule_engine.Rule
    actions: dict[str, Any] = field(default_factory=dict)


def _placeholders_valid(text: str, where: str, context: rule_engine.Context) -> None:
    """Check that every ``{a.b.c}`` placeholder names a field of ticket, prediction or account."""
    for path in PLACEHOLDER.findall(text):
        parts = path.split(".")
        try:
            current = context.resolve_type(parts[0])
        except rule_engine.errors.SymbolResolutionError:
            raise PolicyError(
                f"{where}: placeholder {{{path}}}: unknown name {parts[0]!r}, "
                "expected ticket, prediction or account"
            ) from None
        for part in parts[1:]:
            while getattr(current, "inner_type", None) is not None:
                current = current.inner_type
            attributes = getattr(current, "attributes", None)
            if not attributes or part not in attributes:
                raise PolicyError(f"{where}: placeholder {{{path}}}: unknown field {part!r}")
            current = attributes[part]


def _validate_actions(entry: dict[str, Any], where: str, context) -> dict[str, Any]:
    actions: dict[str, Any] = {}
    priority = entry.get("priority")
    if priority is not None:
        if priority not in PRIORITIES:
            raise PolicyError(f"{where}: priority {priority!r} is not one of {PRIORITIES}")
        actions["priority"] = priority
    queue = entry.get("force_queue")
    if queue is not None:
        if not isinstance(queue, str) or not queue:
            raise PolicyError(f"{where}: force_queue must be a queue name")
        actions["force_queue"] = queue
    forbid = entry.get("forbid_queue")
    if forbid is not None:
        forbid = [forbid] if isinstance(forbid, str) else forbid
        if not isinstance(forbid, list) or not all(isinstance(q, str) and q for q in forbid):
            raise PolicyError(f"{where}: forbid_queue must be a queue name or a list of them")
        actions["forbid_queue"] = list(forbid)
    tags = entry.get("tags")
    if tags is not None:
        if not isinstance(tags, list) or not all(
            isinstance(tag, str) and tag and not re.search(r"\s", tag) for tag in tags
        ):
            raise PolicyError(f"{where}: tags must be a list of words without spaces")
        actions["tags"] = list(tags)
    for flag in ("escalate", "require_confirmation"):
        if flag in entry:
            if not isinstance(entry[flag], bool):
                raise PolicyError(f"{where}: {flag} must be true or false")
            if entry[flag]:
                actions[flag] = True
    follow_up = entry.get("follow_up")
    if follow_up is not None:
        if isinstance(follow_up, str):
            follow_up = {"team": follow_up}
        if not isinstance(follow_up, dict) or not isinstance(follow_up.get("team"), str):
            raise PolicyError(f'{where}: follow_up needs a team, e.g. {{ team = "..." }}')
        unknown = sorted(set(follow_up) - {"team", "note"})
        if unknown:
            raise PolicyError(f"{where}: follow_up has unknown key(s) {', '.join(unknown)}")
        note = follow_up.get("note", "")
        if not isinstance(note, str):
            raise PolicyError(f"{where}: follow_up.note must be text")
        _placeholders_valid(note, f"{where}: follow_up.note", context)
        actions["follow_up"] = {"team": follow_up["team"], "note": note}
    note = entry.get("note")
    if note is not None:
        if not isinstance(note, str) or not note:
            raise PolicyError(f"{where}: note must be text")
        _placeholders_valid(note, f"{where}: note", context)
        actions["note"] = note
    return actions


class RuleSet:
    """The ``[[rules]]`` of a policy file, compiled once and evaluated for every ticket."""

    def __init__(self, rules: list[Rule], context: rule_engine.Context):
        self.rules = rules
        self.context = context

    def __len__(self) -> int:
        return len(self.rules)

    @classmethod
    def from_policy(cls, rules: list[dict]) -> RuleSet:
        """Compile ``[[rules]]``; raise :class:`PolicyError` naming the rule and position."""
        if rules is None:
            rules = []
        if not isinstance(rules, list):
            raise PolicyError("rules must be an array of tables ([[rules]])")
        context = build_context()
        compiled: list[Rule] = []
        seen: set[str] = set()
        for index, entry in enumerate(rules, start=1):
            label = f"rule {index}"
            if not isinstance(entry, dict):
                raise PolicyError(f"{label}: expected a table with name and condition")
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise PolicyError(f"{label}: name is missing")
            where = f"rule {index} {name!r}"
            if name in seen:
                raise PolicyError(f"{where}: another rule has the same name")
            seen.add(name)
            unknown = sorted(set(entry) - set(RULE_KEYS))
            if unknown:
                raise PolicyError(
                    f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(RULE_KEYS)}"
                )
            if entry.get("enabled", True) is False:
                continue
            condition = entry.get("condition")
            if not isinstance(condition, str) or not condition.strip():
                raise PolicyError(f"{where}: condition is missing")
            try:
                rule = rule_engine.Rule(condition, context=context)
            except rule_engine.errors.EngineError as exc:
                raise PolicyError(
                    f"{where}: invalid condition{describe_condition_error(condition, exc)}"
                ) from None
            actions = _validate_actions(entry, where, context)
            if not actions:
                raise PolicyError(f"{where}: no action; set at least one of {ACTION_KEYS}")
            compiled.append(Rule(name=name, condition=condition, compiled=rule, actions=actions))
        return cls(compiled, context)

    def evaluate(self, ticket, prediction, account) -> list[RuleOutcome]:
        """Return the rules whose condition holds, in policy order, with notes filled in.

        A condition that fails at evaluation time (a value of an unexpected type) counts
        as not matched and is logged with the rule's name and the ticket id.
        """
        values = {
            "ticket": ticket if not isinstance(ticket, dict) else Ticket.from_dict(ticket),
            "prediction": prediction,
            "account": _account(account),
        }
        outcomes = []
        for rule in self.rules:
            try:
                matched = rule.compiled.matches(values)
            except rule_engine.errors.EngineError as exc:
                log.warning(
                    "rule %r on ticket %s could not be evaluated: %s",
                    rule.name,
                    getattr(values["ticket"], "id", None),
                    exc.message,
                )
                continue
            if matched:
                outcomes.append(
                    RuleOutcome(rule.name, self._fill(rule.actions, values), rule.condition)
                )
        return outcomes

    def _fill(self, actions: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        filled = dict(actions)
        if "note" in filled:
            filled["note"] = self._render(filled["note"], values)
        if "follow_up" in filled:
            follow_up = dict(filled["follow_up"])
            follow_up["note"] = self._render(follow_up.get("note", ""), values)
            filled["follow_up"] = follow_up
        for key in ("forbid_queue", "tags"):
            if key in filled:
                filled[key] = list(filled[key])
        return filled

    def _render(self, text: str, values: dict[str, Any]) -> str:
        def replace(found: re.Match) -> str:
            value: Any = values
            for part in found.group(1).split("."):
                value = _read(value, part)
                if value is None:
                    return "(not recorded)"
            return str(value)

        return PLACEHOLDER.sub(replace, text)


def _account(account) -> AccountContext:
    if account is None:
        return AccountContext()
    if isinstance(account, dict):
        return AccountContext.from_dict(account)
    return account


def combine(outcomes: list[RuleOutcome]) -> dict[str, Any]:
    """Merge fired rules into one set of actions: the highest priority, the first forced
    queue, every forbidden queue, tag, follow-up and note, and any escalation."""
    merged: dict[str, Any] = {
        "priority": None,
        "force_queue": None,
        "forbid_queue": [],
        "tags": [],
        "escalate": False,
        "follow_ups": [],
        "require_confirmation": False,
        "notes": [],
    }
    for outcome in outcomes:
        actions = outcome.actions
        priority = actions.get("priority")
        if priority and (
            merged["priority"] is None
            or PRIORITIES.index(priority) > PRIORITIES.index(merged["priority"])
        ):
            merged["priority"] = priority
        if actions.get("force_queue") and merged["force_queue"] is None:
            merged["force_queue"] = actions["force_queue"]
        merged["forbid_queue"].extend(
            q for q in actions.get("forbid_queue", []) if q not in merged["forbid_queue"]
        )
        merged["tags"].extend(t for t in actions.get("tags", []) if t not in merged["tags"])
        merged["escalate"] = merged["escalate"] or bool(actions.get("escalate"))
        merged["require_confirmation"] = merged["require_confirmation"] or bool(
            actions.get("require_confirmation")
        )
        if actions.get("follow_up"):
            merged["follow_ups"].append({"rule": outcome.name, **actions["follow_up"]})
        if actions.get("note"):
            merged["notes"].append(actions["note"])
    return merged
