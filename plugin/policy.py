"""The policy: from a prediction and account context to a decision, and from a decision to
what the mode lets deskroute write.

The policy file is TOML::

    mode = "suggest"                 # shadow, suggest or auto
    [defaults]
    priority = "normal"
    tags = []                        # added to every ticket deskroute writes to
    [queues.Hardware]
    priority = "normal"
    tags = ["hardware"]
    auto = true                      # false keeps this queue on suggestions in auto mode
    [queues.Hardware.zendesk]        # routing target, handed to the Zendesk connector
    group_id = 360000000001
    [[rules]]                        # account rules, see plugin/rules.py

Prediction and action stay apart. The model predicts what the ticket is, the policy decides
what may happen automatically, and every decision lists the reasons behind it.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from connectors.base import WriteBack
from model.priority import LEVELS as PRIORITY_LEVELS
from plugin.config import MODES
from plugin.context import check_enrichment_options
from plugin.rules import PolicyError, RuleOutcome, RuleSet

log = logging.getLogger(__name__)

PRIORITIES = PRIORITY_LEVELS
AUTO_ROUTE = "auto_route"
NEEDS_CONFIRMATION = "needs_confirmation"
ESCALATE = "escalate"
ACTIONS = (AUTO_ROUTE, NEEDS_CONFIRMATION, ESCALATE)
HELPDESK_TABLES = ("zendesk", "jira")
# Tables read by the account context sources (plugin/context.py).
ENRICHMENT_TABLES = ("salesforce", "netsuite", "businesscentral", "enrichment")


def highest_priority(*values: str | None) -> str | None:
    ranked = [value for value in values if value in PRIORITIES]
    return max(ranked, key=PRIORITIES.index) if ranked else None


def tag_slug(value: str) -> str:
    """Turn a queue name into a tag: lower case, no spaces (Zendesk splits tags on them)."""
    return re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")


@dataclass
class QueuePolicy:
    name: str
    priority: str | None = None
    tags: list[str] = field(default_factory=list)
    auto: bool = True
    targets: dict[str, Any] = field(default_factory=dict)


@dataclass
class Decision:
    """The outcome for one ticket: what it is, how urgent, and what may happen."""

    queue: str
    priority: str
    action: str
    tags: list[str]
    reasons: list[dict[str, str]]
    confidence: float | None = None
    threshold: float | None = None
    alternatives: list[tuple[str, float]] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    follow_ups: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["alternatives"] = [[queue, prob] for queue, prob in self.alternatives]
        return data


def _reason(rule: str, detail: str) -> dict[str, str]:
    return {"rule": rule, "detail": detail}


class Policy:
    """A loaded policy file. Built once by the app factory and shared by all threads."""

    def __init__(self, document: dict[str, Any], source: str = "<policy>"):
        self.source = source
        self.document = document
        self.mode = document.get("mode", "shadow")
        defaults = document.get("defaults", {})
        self.default_priority = defaults.get("priority", "normal")
        self.default_tags = list(defaults.get("tags", []))
        self.queues = {
            name: QueuePolicy(
                name=name,
                priority=table.get("priority"),
                tags=list(table.get("tags", [])),
                auto=bool(table.get("auto", True)),
                targets={key: table[key] for key in HELPDESK_TABLES if key in table},
            )
            for name, table in document.get("queues", {}).items()
        }
        self.helpdesk_options = {key: document.get(key, {}) for key in HELPDESK_TABLES}
        self.rules = RuleSet.from_policy(document.get("rules", []))
        self.validate()

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        """Read a policy file; ``None`` reads the starter policy shipped with deskroute."""
        if path is None:
            text = resources.files("plugin").joinpath("default_policy.toml").read_text()
            source = "starter policy"
        else:
            try:
                text = Path(path).read_text()
            except FileNotFoundError:
                raise PolicyError(f"policy file not found: {path}") from None
            source = str(path)
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"policy file {source} is not valid TOML: {exc}") from None
        return cls(document, source)

    def validate(self) -> None:
        """Raise :class:`PolicyError` naming the first invalid entry."""
        known = {"mode", "defaults", "queues", "rules", "escalation", "clustering"}
        known.update(HELPDESK_TABLES)
        known.update(ENRICHMENT_TABLES)
        for key in self.document:
            if key not in known:
                raise PolicyError(f"{self.source}: unknown top-level key {key!r}")
        try:
            check_enrichment_options(self.document)
        except ValueError as exc:
            raise PolicyError(f"{self.source}: {exc}") from None
        if self.mode not in MODES:
            raise PolicyError(f"{self.source}: mode {self.mode!r} is not one of {MODES}")
        if self.default_priority not in PRIORITIES:
            raise PolicyError(
                f"{self.source}: defaults.priority {self.default_priority!r} "
                f"is not one of {PRIORITIES}"
            )
        from connectors.jira import JiraOptions, validate_routing

        try:
            jira_options = JiraOptions.from_table(self.helpdesk_options.get("jira"))
        except ValueError as exc:
            raise PolicyError(f"{self.source}: jira: {exc}") from None
        for name, table in self.document.get("queues", {}).items():
            if not isinstance(table.get("auto", True), bool):
                raise PolicyError(f"{self.source}: queues.{name}.auto must be true or false")
        for queue in self.queues.values():
            jira = queue.targets.get("jira")
            if jira is not None:
                try:
                    validate_routing(jira, jira_options)
                except ValueError as exc:
                    raise PolicyError(f"{self.source}: queues.{queue.name}.jira: {exc}") from None
            if queue.priority is not None and queue.priority not in PRIORITIES:
                raise PolicyError(
                    f"{self.source}: queues.{queue.name}.priority {queue.priority!r} "
                    f"is not one of {PRIORITIES}"
                )
            zendesk = queue.targets.get("zendesk")
            if zendesk is not None:
                group_id = zendesk.get("group_id") if isinstance(zendesk, dict) else None
                if isinstance(group_id, bool) or not isinstance(group_id, int):
                    raise PolicyError(
                        f"{self.source}: queues.{queue.name}.zendesk.group_id must be "
                        "the integer id of a Zendesk group"
                    )
        for tag in self.default_tags + [t for q in self.queues.values() for t in q.tags]:
            if not isinstance(tag, str) or not tag or re.search(r"\s", tag):
                raise PolicyError(f"{self.source}: tag {tag!r} must be a word without spaces")

    def check_labels(self, labels: list[str]) -> list[str]:
        """Return warnings for queues the model predicts that the policy does not map."""
        warnings = [
            f"model queue {label!r} has no [queues.{label}] table: it is suggested, never routed"
            for label in labels
            if label not in self.queues
        ]
        warnings += [
            f"[queues.{name}] names no queue of the model: it applies only when a rule "
            "forces that queue"
            for name in self.queues
            if name not in labels
        ]
        return warnings

    def decide(self, ticket, prediction, account=None, own_tag: str = "deskroute") -> Decision:
        """Turn a prediction (and account context, when there is one) into a decision."""
        reasons: list[dict[str, str]] = []
        action = AUTO_ROUTE
        # A low-confidence prediction blocks auto-routing unless a rule forces the queue.
        model_blocks = False
        queue_name = prediction.queue
        alternatives = [tuple(item) for item in prediction.alternatives]

        detail = f"predicted {prediction.queue} with confidence {prediction.confidence:.2f}"
        if prediction.threshold is None:
            reasons.append(_reason("model", detail + ", a queue without a safe threshold"))
            model_blocks = True
        elif prediction.confidence < prediction.threshold:
            reasons.append(
                _reason("model", detail + f", below the threshold {prediction.threshold:.2f}")
            )
            model_blocks = True
        else:
            reasons.append(
                _reason("model", detail + f", at or above the threshold {prediction.threshold:.2f}")
            )
        for guard in prediction.guards:
            reasons.append(_reason("guard", guard))
            action = NEEDS_CONFIRMATION

        for failure in getattr(account, "failures", None) or []:
            reasons.append(
                _reason("enrichment", f"{failure['source']} lookup failed: {failure['error']}")
            )
            action = NEEDS_CONFIRMATION

        outcomes: list[RuleOutcome] = (
            self.rules.evaluate(ticket, prediction, account) if self.rules else []
        )
        priorities = {
            "queue default": None,
            "text signal": prediction.priority_signal,
            "priority model": getattr(prediction, "predicted_priority", None),
        }
        extra_tags: list[str] = []
        follow_ups: list[dict[str, Any]] = []
        notes: list[str] = []
        escalate = False
        for outcome in outcomes:
            actions = outcome.actions
            reasons.append(_reason(f"rule:{outcome.name}", outcome.describe()))
            if actions.get("force_queue"):
                queue_name = actions["force_queue"]
            forbidden = actions.get("forbid_queue") or []
            if queue_name in forbidden:
                queue_name = next(
                    (name for name, _ in alternatives if name not in forbidden), queue_name
                )
                action = NEEDS_CONFIRMATION
            if actions.get("priority"):
                priorities[f"rule {outcome.name}"] = actions["priority"]
            extra_tags.extend(actions.get("tags") or [])
            if actions.get("follow_up"):
                follow_ups.append({"rule": outcome.name, **actions["follow_up"]})
            if actions.get("note"):
                notes.append(actions["note"])
            if actions.get("escalate"):
                escalate = True
            if actions.get("require_confirmation") and action == AUTO_ROUTE:
                action = NEEDS_CONFIRMATION

        forced = any(outcome.actions.get("force_queue") for outcome in outcomes)
        if model_blocks and not forced:
            action = NEEDS_CONFIRMATION

        sla_priority = getattr(account, "sla_priority", None)
        if sla_priority:
            priorities["entitlement SLA"] = sla_priority

        queue = self.queues.get(queue_name)
        if queue is None:
            reasons.append(_reason("policy", f"no [queues.{queue_name}] table in the policy"))
            action = NEEDS_CONFIRMATION if action == AUTO_ROUTE else action
        elif not queue.auto and action == AUTO_ROUTE:
            reasons.append(_reason("policy", f"auto-routing is off for queue {queue_name}"))
            action = NEEDS_CONFIRMATION
        priorities["queue default"] = (queue.priority if queue else None) or self.default_priority
        priority = highest_priority(*priorities.values()) or self.default_priority
        source = next(name for name, value in priorities.items() if value == priority)
        reasons.append(_reason("priority", f"{priority} from the {source}"))

        if escalate:
            action = ESCALATE

        tags = [own_tag, f"{own_tag}_{tag_slug(queue_name)}", f"{own_tag}_{action}"]
        tags += self.default_tags + (queue.tags if queue else []) + extra_tags
        return Decision(
            queue=queue_name,
            priority=priority,
            action=action,
            tags=list(dict.fromkeys(tags)),
            reasons=reasons,
            confidence=prediction.confidence,
            threshold=prediction.threshold,
            alternatives=alternatives,
            terms=list(prediction.terms),
            follow_ups=follow_ups,
            notes=notes,
        )

    def writeback_for(
        self,
        decision: Decision,
        ticket,
        *,
        mode: str,
        helpdesk: str,
        note: str,
        overridden: set[str] = frozenset(),
    ) -> tuple[WriteBack | None, list[dict[str, str]]]:
        """Return what ``mode`` lets deskroute write for ``decision``, and why it holds back.

        ``overridden`` names fields a human has already changed against an earlier
        decision on this ticket; deskroute never sets those again.
        """
        held: list[dict[str, str]] = []
        if mode == "shadow":
            held.append(_reason("mode", "shadow mode: decision recorded, nothing written"))
            return None, held

        writeback = WriteBack(
            ticket_id=ticket.id,
            add_tags=list(decision.tags),
            note=note,
            updated_stamp=ticket.updated_stamp,
            read_group=ticket.group,
            read_priority=ticket.priority,
        )
        if mode == "suggest":
            held.append(_reason("mode", "suggest mode: note and tags only"))
            return writeback, held

        if decision.action == NEEDS_CONFIRMATION:
            held.append(_reason("mode", "needs confirmation: note and tags only"))
            return writeback, held

        queue = self.queues.get(decision.queue)
        target = queue.targets.get(helpdesk) if queue else None
        if "group" in overridden:
            held.append(_reason("feedback", "a human changed the group: routing not repeated"))
        elif target is None:
            held.append(
                _reason("policy", f"no {helpdesk} routing target for queue {decision.queue}")
            )
        else:
            writeback.group = target
        if "priority" in overridden:
            held.append(_reason("feedback", "a human changed the priority: not set again"))
        else:
            writeback.priority = decision.priority
        return writeback, held
