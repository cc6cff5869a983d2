"""JSON logs, one object per line, with secrets redacted at any depth.

Operators grep and ship these lines; a credential that reaches a log line has leaked, so
redaction happens in the formatter, where every record passes, not at call sites.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

REDACTED = "[REDACTED]"

# Key names (compared without separators or case) whose values are never logged.
_SENSITIVE = re.compile(
    r"pass(word)?|passwd|secret|token|apikey|credential|authorization|privatekey|accesskey|ciphertext|cookie"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+(@)")


def is_sensitive_key(key: str) -> bool:
    return bool(_SENSITIVE.search(re.sub(r"[^a-z]", "", key.lower())))


def redact(value: Any) -> Any:
    """A copy of value with sensitive keys masked and inline secrets scrubbed from strings."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_sensitive_key(str(k)) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***\2", _BEARER.sub(r"\1" + REDACTED, value))
    return value


_STANDARD_ATTRS = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, val in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = val
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(redact(entry), default=str)


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Faust and aiokafka are chatty at INFO about every partition; keep their warnings.
    for noisy in ("aiokafka", "faust.transport", "faust.tables", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
