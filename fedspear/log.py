"""The ``fedspear`` logger's console output, shared by the command line and the front ends that run as their own
processes (the Flower ServerApp, the served federation): one handler on stderr, set up once.

It sits at the bottom of the import layers (docs/architecture.md), so any module may configure logging without
importing the command line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

logger = logging.getLogger("fedspear")


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; always use the live stderr
        pass


_handler: _StderrHandler | None = None


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Send the ``fedspear`` logger to stderr: INFO by default, DEBUG with -v, WARNING with -q."""
    global _handler
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 0 else logging.INFO
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(_handler)
    logger.setLevel(level)
