"""MoP: Mixture of Personas for population simulation with a frozen language model.

    import mop
    gate = mop.GateExport.from_pretrained("benchmarks/results/fidelity_scale_gate")
    rows = mop.simulate(gate, "smollm2-135m", [{"movie": "Heat", "label": "fresh"}], num_samples=2, seed=0)

The names below are imported on first use: ``import mop`` loads no model, no torch. docs/api.md is the
reference.
"""

from __future__ import annotations

__version__ = "0.1.0"

# public name -> the module that defines it (imported when the name is first used)
_LAZY = {
    "GateExport": "mop.export",
    "load_lm": "mop.assets",
    "simulate": "mop.api",
    "evaluate_population": "mop.api",
    "format_table": "mop.evaluate",
    "load_population": "mop.outputs",
    "population_schema": "mop.outputs",
    "population_features": "mop.outputs",
    "MopError": "mop.errors",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'mop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
