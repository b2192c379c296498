"""SOP / SynOps / MAC counting and energy estimates, checked against the kernels' own counts.

    import snnsparse as ss
    report = ss.energy.count(model, x)          # x: [T, B, ...] or flat; preset="fp32" | "fp16" | "int8"
    report.layers["features.0"].sop             # per layer: sop_dense, synops, sop, mac, energy_pj, ...
    report.total.energy_pj, report.ann_energy_pj, report.energy_ratio
    print(report.table()); report.plot("energy.png")

Conventions (details and sources in counter.py and report.CONVENTIONS):
  sop_dense = firing rate x T x dense MACs           (syops-counter; Spikformer line of papers)
  synops    = exact synaptic ops with dense weights  (SpikingJelly 2.0 op_counter.SynOpCounter)
  sop       = exact ops with the mask applied        (what the event-driven kernels execute)
  mac       = MACs of non-binary (encoding) inputs, mask applied
  energy    = E_AC x sop + E_MAC x mac               (Horowitz, ISSCC 2014, 45 nm)
"""
from .cli import add_energy_args, demo_model, energy_main  # noqa: F401
from .constants import PRESETS, EnergyConstants, constants  # noqa: F401
from .counter import count, layer_mask  # noqa: F401
from .report import CONVENTIONS, Counts, LayerCounts, Report, plot, table  # noqa: F401

__all__ = ["count", "layer_mask", "Report", "LayerCounts", "Counts", "EnergyConstants", "PRESETS", "constants",
           "CONVENTIONS", "table", "plot", "add_energy_args", "energy_main", "demo_model"]
