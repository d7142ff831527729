"""Structured JSON logs for the ``lesionsynth`` loggers (one object per line on stderr).

Messages never carry image bytes, file names or request bodies: errors are logged by their kind and the
field they concern (the messages of models.errors are written that way). BentoML's access log
(method, path, status, latency) stays in BentoML's own format.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("service", "job_id", "model_version", "transport"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class RedactValidationInput(logging.Filter):
    """BentoML logs a request's pydantic ValidationError with its traceback, whose text repeats the
    offending input (for a batch request: the start of a base64 image). Keep the field and the reason,
    drop the input."""

    def filter(self, record: logging.LogRecord) -> bool:
        from pydantic import ValidationError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ValidationError):
            reasons = "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
            )
            record.msg, record.args = f"invalid request: {reasons}", ()
            record.exc_info, record.exc_text = None, None
        return True


#: BentoML's logger of failed requests (bentoml/_internal/server/http_app.py: log_exception).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def configure(level: str = "INFO") -> None:
    """Send ``lesionsynth.*`` records to stderr as JSON (idempotent); redact inputs from BentoML's
    validation-error log records."""
    request_logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, RedactValidationInput) for f in request_logger.filters):
        request_logger.addFilter(RedactValidationInput())
    logger = logging.getLogger("lesionsynth")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
