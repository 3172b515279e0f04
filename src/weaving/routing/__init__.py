"""Input-adaptive routing over compressed task vectors: MASS (Crisostomi et al., 2025).

    from weaving.routing import MASS
    mass = MASS(clip_model, pretrained_visual_sd, compressed, heads, task_names=names)
    out = mass(images)            # out.predictions, out.heads, out.selected, out.routing

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from weaving._lazy import lazy_exports

_EXPORTS = {
    "MASS": "weaving.routing.mass",
    "MassOutput": "weaving.routing.mass",
    "MassStats": "weaving.routing.mass",
    "Routing": "weaving.routing.mass",
    "choose_heads": "weaving.routing.mass",
    "default_layer": "weaving.routing.mass",
    "routing_coefficients": "weaving.routing.mass",
    "routing_key": "weaving.routing.mass",
    "select_tasks": "weaving.routing.mass",
    "subspace_residuals": "weaving.routing.mass",
    "run_mass_experiment": "weaving.routing.experiment",
}

__all__ = [
    "MASS",
    "MassOutput",
    "MassStats",
    "Routing",
    "choose_heads",
    "default_layer",
    "routing_coefficients",
    "routing_key",
    "run_mass_experiment",
    "select_tasks",
    "subspace_residuals",
]

__getattr__, __dir__ = lazy_exports("weaving.routing", _EXPORTS, globals())
