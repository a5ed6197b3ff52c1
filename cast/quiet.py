"""Known, harmless library messages kept out of job logs.

Each entry names one logger and the start of one message; a filter on that logger drops those
records and nothing else (other messages of the same logger, and every other logger and warning,
still reach the log). Installed by `cast.cli` at import, before torch or torchao load.

  * torchao: "Failed to load .../torchao/_C_*.so: Could not load this library" -- optional CUDA
    kernels (mxfp8, cutlass) of a wheel built for another Python/CUDA; the CPU paths never use them.
  * torch.utils._pytree: "<enum ...> is an Enum subclass and is now natively supported by
    torch.compile ... register_constant() on Enum subclasses is deprecated" -- torchao registers its
    enums the old way at import; nothing of ours calls register_constant.
"""
from __future__ import annotations

import logging
import re

KNOWN = {
    "torchao": re.compile(r"Failed to load \S*torchao\S*\.so\b"),
    "torch.utils._pytree": re.compile(r".* is an Enum subclass and is now natively supported by torch\.compile "
                                      r"as an opaque value type\. Calling register_constant\(\) on Enum subclasses is deprecated"),
}


class KnownMessage(logging.Filter):
    """Drops the records of one logger whose message matches `pattern` (from its start)."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not self.pattern.match(record.getMessage())
        except Exception:  # noqa: BLE001 - a record that cannot format is never ours to drop
            return True


def install() -> None:
    """Add one KnownMessage filter per KNOWN logger (idempotent)."""
    for name, pattern in KNOWN.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownMessage) for f in logger.filters):
            logger.addFilter(KnownMessage(pattern))
