"""structlog set-up shared by the CLI and every actor: JSON when not a TTY, readable otherwise."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(json: bool | None = None, level: str = "INFO") -> None:
    """Configure structlog once per process; `json=None` picks JSON unless stderr is a TTY."""
    use_json = not sys.stderr.isatty() if json is None else json
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # The stream is looked up when a message is written: whoever replaced sys.stderr
        # since (a test's capture, a daemon's redirection) gets it, never a closed one.
        logger_factory=lambda *_: structlog.PrintLogger(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
