"""User-facing errors: each message is one line that names the file, parameter or input and the fix."""
from __future__ import annotations

import sys
from contextlib import contextmanager


class ClustViTError(ValueError):
    """Base class of errors caused by user input, configuration or files (not by bugs)."""


class ConfigError(ClustViTError):
    """A model name, configuration value or override is invalid."""


class InputError(ClustViTError):
    """A tensor or image handed to the model is malformed."""


class WeightsError(ClustViTError):
    """A weights file is missing, unreadable or does not fit the model."""


@contextmanager
def cli_errors(prog: str):
    """Turn ClustViTError (and missing files) into one line on stderr and exit code 2, no traceback."""
    try:
        yield
    except (ClustViTError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
