"""Model-output conversion as linear maps: prediction = c_x * x + c_out * model_output.

With x = alpha x0 + sigma eps, the parameterizations are
``epsilon`` (eps), ``sample`` (x0), ``v_prediction`` (v = alpha eps - sigma x0, arXiv 2202.00512) and
``flow_prediction`` (v = eps - x0, rectified flow). Each is linear in (x, output), so a solver can fold the
conversion into its step coefficients (DESIGN.md section 3).
"""

from __future__ import annotations

import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")
TARGETS = ("data", "noise")


def conversion(prediction_type: str, target: str, alpha, sigma) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (c_x, c_out) with target = c_x * x + c_out * output, for arrays of alpha, sigma."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; valid choices: {', '.join(PREDICTION_TYPES)}")
    if target not in TARGETS:
        raise ValueError(f"Unknown conversion target {target!r}; valid choices: {TARGETS}")
    a, s = np.asarray(alpha, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    zero, one = np.zeros_like(a), np.ones_like(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        if target == "noise" and prediction_type == "epsilon":
            return zero, one
        # data prediction x0 = dx * x + do * output
        if prediction_type == "epsilon":
            dx, do = 1.0 / a, -s / a
        elif prediction_type == "sample":
            dx, do = zero, one
        elif prediction_type == "v_prediction":
            norm = a * a + s * s
            dx, do = a / norm, -s / norm
        else:  # flow_prediction: x = (alpha + sigma) x0 + sigma v
            dx, do = 1.0 / (a + s), -s / (a + s)
        if target == "data":
            return dx, do
        # eps = (x - alpha x0) / sigma
        return (1.0 - a * dx) / s, -a * do / s
