"""Whether an export's precision graphs can be reused as they are (the main job's re-runs)."""

from __future__ import annotations

import json
from pathlib import Path

from ..runtime.cpu_numerics import this_machine, verdict
from ..runtime.export import Export
from ..runtime.manifest import verify_files
from .int8 import DEFAULT_WEIGHT_BITS
from .samples import PairSource
from .smooth import DEFAULT_ALPHA


def stale_reason(
    export_dir: str | Path,
    precision: str,
    calib: PairSource | None = None,
    smooth: float | None = DEFAULT_ALPHA,
    weight_bits: int = DEFAULT_WEIGHT_BITS,
) -> str | None:
    """Why the export's ``precision`` graphs cannot be reused (None: present, hash-valid,
    verified on a CPU of this one's numerics class, and, for INT8 with ``calib``, calibrated
    on the same pairs with the same ``smooth`` and ``weight_bits``)."""
    import onnx

    from ..errors import DITError

    export_dir = Path(export_dir)
    try:
        manifest = Export.open(export_dir).manifest
        if precision not in manifest.precisions:
            return f"no {precision} graphs"
        verify_files(export_dir, manifest, list(manifest.precisions[precision]), precision)
        decision = verdict(precision, manifest.verified.get(precision), this_machine(), False)
        if decision.action != "run":
            return decision.reason
        if calib is None:
            return None
        for role, spec in manifest.precisions[precision].items():
            if spec.precision != precision:
                continue  # a role kept FP32
            props = {
                p.key: p.value
                for p in onnx.load(
                    str(export_dir / spec.file), load_external_data=False
                ).metadata_props
            }
            recipe = json.loads(props.get("dit.precision_recipe", "{}"))
            used, wanted = recipe.get("calibration"), calib.describe()
            if used != wanted:
                return f"{role} was calibrated on {used!r}, not {wanted!r}"
            if recipe.get("smooth_alpha") != smooth:
                return f"{role} was smoothed with alpha {recipe.get('smooth_alpha')}, not {smooth}"
            if recipe.get("weight_bits", 8) != weight_bits:
                return f"{role} has {recipe.get('weight_bits', 8)}-bit weights, not {weight_bits}"
    except DITError as exc:
        return str(exc)
    return None
