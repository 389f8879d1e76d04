"""Log records that stay on one line whatever the requests they quote contain."""

from __future__ import annotations

import logging
import re

# C0 controls but tab, DEL, and the line separators that some log viewers break lines at.
CONTROL_CHARACTERS = re.compile("[\\x00-\\x08\\x0a-\\x1f\\x7f\\x85\\u2028\\u2029]")


class OneLineMessages(logging.Filter):
    """Escape line breaks and other control characters in log messages.

    Messages quote values from requests, such as event types and ticket ids, and a line
    break in one would otherwise start a forged log line. Tracebacks are added after this
    filter runs and keep their lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def escape_controls(text: str) -> str:
    return CONTROL_CHARACTERS.sub(
        lambda match: match.group().encode("unicode_escape").decode(), text
    )
