"""structlog set-up: JSON lines on stderr (journald keeps them), or console for a terminal."""

from __future__ import annotations

import sys

import structlog

from linerd.config import LOG_LEVELS


def setup(level: str, fmt: str) -> None:
    numeric = LOG_LEVELS[level.lower()]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # The stderr of the moment, not the one at set-up: an in-process caller (a test) may
        # swap sys.stderr and close the old one.
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_args: object) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)
