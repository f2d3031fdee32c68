"""Memory sizes as users write them: Docker's syntax, or a plain number of MB.

    512        512 MB (an int, or a string of digits: plain numbers are MB, as the keys say)
    256m, 1g   Docker's units b, k, m, g, t (binary: 1g = 1024 MB), any case
    512MiB     also kb/mb/gb/tb and kib/mib/gib/tib, all binary as Docker reads them; 1.5g too

Every memory size the project takes (the `sandbox.memory_mb` / `reward.worker_memory_mb` config
keys, `python -m sandboxes.run --memory`, `run_code(memory_mb=)`, the pools, an SWE instance's
`memory_mb`) goes through `memory_mb`, so one syntax works everywhere.
"""

from __future__ import annotations

import re

_UNITS = {"b": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(b|[kmgt](?:i?b)?)?$", re.IGNORECASE)
FORMS = "a number of MB (512) or a size with a unit (256m, 1g, 512MiB)"


def memory_mb(value: int | float | str, what: str = "memory size") -> int:
    """`value` in whole MB (MiB, as Docker counts them), rounded down; 0 stays 0 (the keys where
    0 means "no limit"). Raises ValueError naming `what` and the accepted forms."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}={value!r}: not a memory size; use {FORMS}")
    if isinstance(value, (int, float)):
        if value < 0 or value != int(value):
            raise ValueError(f"{what}={value!r}: use a whole, non-negative number of MB or {FORMS}")
        return int(value)
    m = _SIZE.match(value.strip())
    if not m:
        raise ValueError(f"{what}={value!r}: not a memory size; use {FORMS}")
    number, unit = m.groups()
    if unit is None:  # a plain number is MB, as for an int
        if "." in number:
            raise ValueError(f"{what}={value!r}: use a whole number of MB or {FORMS}")
        return int(number)
    shift = _UNITS[unit[0].lower()]
    nbytes = float(number) * (1 << shift) if "." in number else int(number) << shift
    mb = int(nbytes) >> 20
    if nbytes and not mb:
        raise ValueError(f"{what}={value!r} is below 1 MB")
    return mb
