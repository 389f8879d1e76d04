"""Priority levels, and how a help desk's own priority values map onto them.

A priority column in exported tickets uses the help desk's own names for its levels:
Zendesk's ``low`` to ``urgent``, Jira's ``Lowest`` to ``Highest``, ITIL's ``1 - Critical``
or ``P2``. The priority head is trained on deskroute's four levels, so every value is
mapped first: through an explicit map when the admin gives one, then by name, then by a
leading number where 1 is the most urgent.
"""

from __future__ import annotations

import re
from collections import Counter

from model.data import DataError

LEVELS = ("low", "normal", "high", "urgent")

NAMES = {
    "lowest": "low",
    "low": "low",
    "minor": "low",
    "trivial": "low",
    "planning": "low",
    "normal": "normal",
    "medium": "normal",
    "moderate": "normal",
    "standard": "normal",
    "high": "high",
    "major": "high",
    "important": "high",
    "urgent": "urgent",
    "highest": "urgent",
    "critical": "urgent",
    "blocker": "urgent",
    "emergency": "urgent",
}
# "1", "P1", "1 - Critical", "Priority 2": the first number decides, 1 being the highest.
NUMBERED = re.compile(r"^(?:p|prio|priority)?\s*([1-5])(?:\b|$)")
BY_NUMBER = {"1": "urgent", "2": "high", "3": "normal", "4": "low", "5": "low"}


def parse_priority_map(text: str | None) -> dict[str, str]:
    """Read ``VALUE=LEVEL,VALUE=LEVEL`` into a dict keyed by the lower-cased value."""
    mapping: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        value, sep, level = item.partition("=")
        level = level.strip().lower()
        if not sep or not value.strip():
            raise DataError(f"priority map entry {item.strip()!r} is not VALUE=LEVEL")
        if level not in LEVELS:
            raise DataError(
                f"priority map entry {item.strip()!r}: level must be one of {', '.join(LEVELS)}"
            )
        key = value.strip().lower()
        if mapping.get(key, level) != level:
            raise DataError(
                f"priority map gives {value.strip()!r} two levels: {mapping[key]} and {level}"
            )
        mapping[key] = level
    return mapping


def priority_level(value: str, mapping: dict[str, str] | None = None) -> str | None:
    """Return deskroute's level for one priority value, or None when it cannot be read."""
    key = value.strip().lower()
    if mapping and key in mapping:
        return mapping[key]
    if key in NAMES:
        return NAMES[key]
    words = re.findall(r"[a-z]+", key)
    named = {NAMES[word] for word in words if word in NAMES}
    if len(named) == 1:
        return named.pop()
    match = NUMBERED.match(key)
    return BY_NUMBER[match.group(1)] if match else None


def map_priorities(
    values: list[str], mapping: dict[str, str] | None = None
) -> tuple[list[str | None], dict[str, str]]:
    """Map raw values to levels; empty values become None.

    Returns the levels and the map of every distinct raw value to its level. Raises
    :class:`DataError` naming the values that no rule maps.
    """
    levels: list[str | None] = []
    seen: dict[str, str] = {}
    unknown: Counter[str] = Counter()
    for value in values:
        if not value.strip():
            levels.append(None)
            continue
        level = priority_level(value, mapping)
        if level is None:
            unknown[value.strip()] += 1
        else:
            seen[value.strip()] = level
        levels.append(level)
    if unknown:
        listed = ", ".join(
            f"{value!r} ({count} {'row' if count == 1 else 'rows'})"
            for value, count in unknown.most_common(10)
        )
        raise DataError(
            f"priority values that map to no level: {listed}; map them when training with "
            f"--priority-map VALUE=LEVEL,... (levels: {', '.join(LEVELS)})"
        )
    return levels, dict(sorted(seen.items()))
