"""The shape of an extension point's entry: what builds it, and the config keys it reads.

LOSSES (engine/losses.py), OPTIMIZERS and SCHEDULERS (engine/optim.py) map a name to a Part. A key that some
entry of a registry reads and no chosen entry does gets a "has no effect" note (engine/config.py
without_effect), so a new entry with a new key needs no if-statement anywhere else.
"""
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Part:
    build: Callable  # the function the registry's caller calls (its signature is the registry's)
    reads: tuple[str, ...] = ()  # keys of its config section it reads beyond those every entry gets


def settings(part: Part, cfg: object) -> dict:
    """The values of the keys part reads, as keyword arguments of its build function."""
    return {key: getattr(cfg, key) for key in part.reads}
