"""Logging helpers named in settings.LOGGING."""
from __future__ import annotations

import logging


class ClientErrorsWithoutTraceback(logging.Filter):
    """A 403 or 404 is routine (a role too low, a stale link): one line in the log, not the
    traceback of the exception that produced it. Server errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", 500) < 500:
            record.exc_info, record.exc_text = None, None
        return True
