"""Users' objects named in the config by a dotted path ``module:attr`` (``data.dataset``, ``feedback.provider``,
``algorithm.name``): how to recognise, import and describe one. The checks of what the object must be live with
its kind: tasks in :mod:`fedspear.tasks.custom`, feedback sources in :mod:`fedspear.extensions`, algorithms in
:mod:`fedspear.algorithms.registry`. See docs/extending.md.

This module sits at the bottom of the import layers (docs/architecture.md): it imports only the config's error.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from fedspear.config_sections import ConfigError

_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_dotted(value: str) -> bool:
    """Whether a config value names an object by dotted path (it contains ``:``)."""
    return ":" in value


def load_object(spec: str, key: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted: ``module:Outer.Inner``).

    Args:
        spec: the dotted path.
        key: the config key it came from, for the error message.

    Raises:
        ConfigError: malformed path, the module does not import (or raises while importing), no such attribute.
    """
    if not _DOTTED.match(spec):
        raise ConfigError(f"{key}={spec}: write a dotted path module:attr, e.g. my_pkg.tasks:MyTask")
    module_name, attr = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{key}={spec}: cannot import '{module_name}' ({exc}); install the package or put its "
                          "folder on PYTHONPATH") from None
    except Exception as exc:  # the user's module failed while importing
        raise ConfigError(f"{key}={spec}: importing '{module_name}' failed: {type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}={spec}: '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def describe(obj: Any) -> str:
    """``module.Name`` of a class or function, else its type: what the user named, without a memory address."""
    name = getattr(obj, "__qualname__", None)
    if name is None:
        return f"an object of type {type(obj).__name__}"
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "object"
    return f"{kind} {getattr(obj, '__module__', '?')}.{name}"
