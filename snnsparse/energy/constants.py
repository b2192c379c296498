"""Energy per operation: Horowitz (ISSCC 2014, 45 nm) presets and user-set constants.

M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, table of
45 nm arithmetic energy:

    =========  ========  ==========  =====================================
    precision  add (AC)  multiply    MAC = multiply + add
    =========  ========  ==========  =====================================
    fp32       0.9 pJ    3.7 pJ      4.6 pJ
    fp16       0.4 pJ    1.1 pJ      1.5 pJ
    int8       0.03 pJ   0.2 pJ      0.23 pJ
    =========  ========  ==========  =====================================

A spike arriving at a synapse costs one accumulate (AC: add the weight into the membrane
input); a non-binary input costs a multiply-accumulate (MAC). The fp32 pair (0.9 / 4.6) is the
one used by most SNN energy estimates (Spikformer and the syops-counter line of papers).
These are arithmetic-only numbers: memory access, which often dominates on real hardware, is
not included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Union

HOROWITZ = "Horowitz, ISSCC 2014 (45 nm): AC = add, MAC = multiply + add"


@dataclass(frozen=True)
class EnergyConstants:
    """Energy of one accumulate (`e_ac`) and one multiply-accumulate (`e_mac`), in picojoules."""

    e_ac: float
    e_mac: float
    name: str = "custom"
    source: str = "user-set"

    def __post_init__(self):
        for field in ("e_ac", "e_mac"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"EnergyConstants: {field} must be a finite number >= 0 (picojoules), got {v!r}")

    def energy_pj(self, sop: float, mac: float) -> float:
        """E_AC x sop + E_MAC x mac."""
        return self.e_ac * sop + self.e_mac * mac


PRESETS: Dict[str, EnergyConstants] = {
    "fp32": EnergyConstants(0.9, 4.6, "fp32", HOROWITZ),
    "fp16": EnergyConstants(0.4, 1.5, "fp16", HOROWITZ),
    "int8": EnergyConstants(0.03, 0.23, "int8", HOROWITZ),
}


def constants(preset: Union[str, EnergyConstants, None] = "fp32", *, e_ac: Optional[float] = None,
              e_mac: Optional[float] = None) -> EnergyConstants:
    """The constants for `preset` ("fp32", "fp16", "int8" or an EnergyConstants), with `e_ac` /
    `e_mac` (pJ) overriding the preset's values when given."""
    if preset is None:
        preset = "fp32"
    if isinstance(preset, EnergyConstants):
        base = preset
    elif isinstance(preset, str) and preset in PRESETS:
        base = PRESETS[preset]
    else:
        raise ValueError(f"energy preset must be one of {sorted(PRESETS)} or an EnergyConstants, got {preset!r}")
    if e_ac is None and e_mac is None:
        return base
    return EnergyConstants(base.e_ac if e_ac is None else e_ac, base.e_mac if e_mac is None else e_mac,
                           f"{base.name}+custom", "user-set" if base.source == "user-set"
                           else f"user-set (from {base.name}: {base.source})")
