"""fedspear: online federated fine-tuning of LLMs from real-time feedback (SPEAR and its baselines).

Start with the command line (``fedspear --help``, :mod:`fedspear.cli`) or with
:func:`fedspear.config.load_config` and ``fedspear.federation.simulator.run``. Importing this package is
cheap: torch and transformers are only imported by the modules that need them.
"""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fedspear")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Library code logs to the "fedspear" logger; the CLI attaches a handler, a library user may attach their own.
logging.getLogger("fedspear").addHandler(logging.NullHandler())

__all__ = ["__version__"]
