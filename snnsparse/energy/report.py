"""Report types of ss.energy.count() and their rendering (text table, PNG bar chart).

Every count is for the whole `inputs` given to count() (all time steps and all samples);
divide by the batch size for a per-sample number.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from .constants import EnergyConstants

# What each number means and where the convention comes from (printed under the table).
CONVENTIONS: Dict[str, str] = {
    "sop_dense": "firing rate x T x dense MACs of the layer (weight MACs, padded taps included, no bias, "
                 "mask ignored); the convention of syops-counter (Chen et al., github.com/iCGY96/"
                 "syops-counter, ACs = rate x MACs) and the Spikformer line of papers",
    "synops": "exact synaptic operations with dense weights: sum over fired inputs of their outgoing "
              "synapses = sum(conv2d(s, ones_like(w))) / sum(s @ ones^T); taps that fall on padding "
              "or are skipped by the stride cost nothing (SpikingJelly 2.0 op_counter.SynOpCounter)",
    "sop": "exact operations with the mask applied: sum over fired inputs of their kept outgoing "
           "synapses = sum(conv2d(s, mask)) / sum(s @ mask^T); what the event-driven kernels execute "
           "(equal to their return_count=True accumulation count)",
    "mac": "MACs of layers whose input is not binary (the encoding layer): kept weights x output "
           "positions x frames (a dense engine also multiplies padded taps)",
    "energy_pj": "E_AC x sop + E_MAC x mac (Horowitz, ISSCC 2014, 45 nm)",
    "ann_energy_pj": "the same layers run once per sample as an ANN: E_MAC x dense MACs / T",
}


@dataclass
class Counts:
    """Operation counts and energy of a layer (or of the whole model, in Report.total)."""

    sop_dense: float = 0.0
    synops: int = 0
    sop: int = 0
    mac: int = 0
    energy_pj: float = 0.0

    def energy(self, constants: EnergyConstants, *, ops: str = "sop") -> float:
        """E_AC x <ops> + E_MAC x mac, for ops in "sop", "synops", "sop_dense" (to compare conventions)."""
        if ops not in ("sop", "synops", "sop_dense"):
            raise ValueError(f"ops must be 'sop', 'synops' or 'sop_dense', got {ops!r}")
        return constants.energy_pj(getattr(self, ops), self.mac)


@dataclass
class LayerCounts(Counts):
    """Counts of one Linear / Conv2d layer, plus what they were computed from.

    firing_rate: fraction of ones in the layer's binary input (None when it never saw spikes).
    weight_density: fraction of kept synapses (mask True).
    input: "spikes", "analog" (counted as MACs) or "mixed" (both, over several calls).
    calls / frames: forward calls seen and input frames (T x B for a [T, B, ...] input).
    dense_macs: weight MACs of a dense layer over all frames (the basis of sop_dense and the ANN).
    ann_mac: MACs of the ANN equivalent (dense MACs once per sample, i.e. / T).
    notes: how the mask, the path and T were determined.
    """

    name: str = ""
    kind: str = ""
    firing_rate: Optional[float] = None
    weight_density: float = 1.0
    input: str = "spikes"
    calls: int = 0
    frames: int = 0
    dense_macs: int = 0
    ann_mac: float = 0.0
    ann_energy_pj: float = 0.0
    notes: List[str] = field(default_factory=list)


@dataclass
class Report:
    """Result of ss.energy.count().

    layers: layer name -> LayerCounts (only layers that ran, in call order); total: Counts summed.
    ann_energy_pj: energy of the ANN equivalent (every layer as dense MACs, once per sample).
    energy_ratio: energy_pj / ann_energy_pj (below 1: the SNN spends less; nan when the ANN is 0).
    timesteps: the T used for the ANN equivalent (and how it was found, in notes).
    batch_size: samples in the inputs (given, or B of a [T, B, ...] input; None if unknown).
    skipped: modules with parameters that are not counted (BN, norms, ...), by name.
    """

    layers: Dict[str, LayerCounts]
    total: Counts
    ann_energy_pj: float
    energy_ratio: float
    constants: EnergyConstants
    timesteps: int = 1
    batch_size: Optional[int] = None
    skipped: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    conventions: Dict[str, str] = field(default_factory=lambda: dict(CONVENTIONS))

    @property
    def energy_pj(self) -> float:
        return self.total.energy_pj

    @property
    def energy_per_sample_pj(self) -> Optional[float]:
        """total energy / batch_size (None when the batch size is unknown)."""
        return None if not self.batch_size else self.total.energy_pj / self.batch_size

    def to_dict(self) -> dict:
        """Plain-Python (JSON-able) form."""
        d = asdict(self)
        d["energy_pj"] = self.energy_pj
        d["energy_per_sample_pj"] = self.energy_per_sample_pj
        return d

    def table(self, *, exact: bool = False) -> str:
        return table(self, exact=exact)

    def plot(self, path: str, *, title: Optional[str] = None) -> str:
        return plot(self, path, title=title)

    def __str__(self) -> str:
        return self.table()


def _si(v: float, exact: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if exact:
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}"
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}" if not float(v).is_integer() else f"{int(v)}"


def _energy(pj: float) -> str:
    if pj >= 1e6:
        return f"{pj / 1e6:.4g} uJ"
    if pj >= 1e3:
        return f"{pj / 1e3:.4g} nJ"
    return f"{pj:.4g} pJ"


def table(report: Report, *, exact: bool = False) -> str:
    """Per-layer text table: input kind, firing rate, weight density, every count, energy, share."""
    head = ["layer", "type", "input", "rate", "density", "sop_dense", "synops", "sop", "mac", "energy",
            "share"]
    rows = []
    total_e = report.total.energy_pj
    for name, c in report.layers.items():
        share = c.energy_pj / total_e if total_e > 0 else float("nan")
        rows.append([name, c.kind, c.input, "-" if c.firing_rate is None else f"{c.firing_rate:.4g}",
                     f"{c.weight_density:.3f}", _si(c.sop_dense, exact), _si(c.synops, exact), _si(c.sop, exact),
                     _si(c.mac, exact), _energy(c.energy_pj), "-" if math.isnan(share) else f"{100 * share:.1f}%"])
    t = report.total
    rows.append(["total", "", "", "", "", _si(t.sop_dense, exact), _si(t.synops, exact), _si(t.sop, exact),
                 _si(t.mac, exact), _energy(t.energy_pj), "100.0%" if total_e > 0 else "-"])
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    left = {0, 1, 2}

    def fmt(r):
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))

    rule = "-" * len(fmt(head))
    lines = [fmt(head), rule] + [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1])]
    k = report.constants
    ratio = report.energy_ratio
    lines += [
        "",
        f"energy ({k.name}: E_AC {k.e_ac} pJ, E_MAC {k.e_mac} pJ; {k.source}): {_energy(total_e)}"
        + ("" if not report.batch_size else
           f" for {report.batch_size} samples, {_energy(total_e / report.batch_size)} per sample"),
        f"ANN equivalent (dense MACs once per sample, T = {report.timesteps}): {_energy(report.ann_energy_pj)}"
        + ("" if math.isnan(ratio) else f"; SNN / ANN = {ratio:.4f}"
           + (f" ({1 / ratio:.2f}x less)" if 0 < ratio < 1 else "")),
        "counts are for all the inputs given (all time steps and samples); conventions:",
    ]
    for key, text in report.conventions.items():
        lines += textwrap.wrap(f"{key}: {text}", 110, initial_indent="  ", subsequent_indent="      ")
    if report.skipped:
        lines.append("not counted: " + ", ".join(f"{n} ({k})" for n, k in report.skipped.items()))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def plot(report: Report, path: str, *, title: Optional[str] = None) -> str:
    """PNG bar chart: per-layer counts (sop_dense, synops, sop, mac; log scale) and per-layer energy
    (SNN vs ANN equivalent). Returns the path."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(report.layers)
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 1.6 * len(names) + 4), 4.5))
    keys = ("sop_dense", "synops", "sop", "mac")
    w = 0.8 / len(keys)
    for i, key in enumerate(keys):
        vals = [getattr(report.layers[n], key) for n in names]
        ax1.bar(x + (i - (len(keys) - 1) / 2) * w, vals, w, label=key)
    ax1.set_yscale("symlog", linthresh=1)
    ax1.set_xticks(x, names, rotation=45, ha="right")
    ax1.set_ylabel("operations")
    ax1.set_title("operations per layer")
    ax1.legend(fontsize=8)
    snn = [report.layers[n].energy_pj for n in names]
    ann = [report.layers[n].ann_energy_pj for n in names]
    ax2.bar(x - 0.2, snn, 0.4, label=f"SNN (total {_energy(report.total.energy_pj)})")
    ax2.bar(x + 0.2, ann, 0.4, label=f"ANN equivalent (total {_energy(report.ann_energy_pj)})")
    ax2.set_xticks(x, names, rotation=45, ha="right")
    ax2.set_ylabel("energy (pJ)")
    k = report.constants
    ax2.set_title(f"energy per layer ({k.name}: AC {k.e_ac} pJ, MAC {k.e_mac} pJ)")
    ax2.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
