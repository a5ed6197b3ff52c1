"""Expected failures: the CLI prints these as one line and exits 2; anything else is a bug and
keeps its traceback. Each message names the config key or the file at fault."""
from __future__ import annotations


class CastError(ValueError):
    """Base of the expected failures (a ValueError, so `except ValueError` callers still work)."""


class ConfigError(CastError):
    """A bad config value; the message names the key path."""


class InputError(CastError):
    """A missing or corrupt input file; the message names the path."""


class SparsityError(CastError):
    """A weight that is not (or would stop being) exactly N:M, or no layer to sparsify."""


class TrainingDiverged(CastError):
    """A non-finite loss: training stopped, the last good checkpoint is kept."""
