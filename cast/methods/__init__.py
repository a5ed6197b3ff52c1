"""Method registry: every sparsification method is an algorithm name with a kind.

`oneshot` algorithms prune a dense model without training (budget label "0");
`train` algorithms spend a token budget. Adding a method = registering one function here and
naming it in config `methods:`; the sparsify rule and stage need no change.
"""
from __future__ import annotations

from typing import Callable

REGISTRY: dict[str, tuple[str, Callable]] = {}


def register(algorithm: str, kind: str):
    def deco(fn):
        REGISTRY[algorithm] = (kind, fn)
        return fn
    return deco


def kind_of(algorithm: str) -> str:
    from . import cast_train, oneshot  # noqa: F401 - populate the registry

    return REGISTRY[algorithm][0]


def get(algorithm: str) -> Callable:
    kind_of(algorithm)
    return REGISTRY[algorithm][1]


# light-weight mirror for Snakemake (no torch import at parse time)
KINDS = {"cast": "train", "srste": "train", "magnitude": "oneshot", "wanda": "oneshot", "sparsegpt": "oneshot"}
