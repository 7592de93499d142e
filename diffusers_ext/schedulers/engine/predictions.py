"""Model-output conversion as linear maps: prediction = c_x * x + c_out * model_output.

With x = alpha x0 + sigma eps, the parameterizations are
``epsilon`` (eps), ``sample`` (x0), ``v_prediction`` (v = alpha eps - sigma x0, arXiv 2202.00512) and
``flow_prediction`` (v = eps - x0, rectified flow). With EDM preconditioning (arXiv 2206.00364, a
``sigma_data``; alpha = 1) the raw output F of an ``epsilon`` / ``v_prediction`` network gives
x0 = c_skip x + c_out F, c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = +-sigma sigma_data /
sqrt(sigma^2 + sigma_data^2). Each is linear in (x, output), so a solver can fold the conversion into its
step coefficients (``plan.build_plan``).
"""

from __future__ import annotations

import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")
TARGETS = ("data", "noise")


EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")


def conversion(prediction_type: str, target: str, alpha, sigma,
               sigma_data: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (c_x, c_out) with target = c_x * x + c_out * output, for arrays of alpha, sigma
    (``sigma_data``: the output of an EDM-preconditioned network)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"Unknown prediction_type {prediction_type!r}; valid choices: {', '.join(PREDICTION_TYPES)}")
    if target not in TARGETS:
        raise ValueError(f"Unknown conversion target {target!r}; valid choices: {TARGETS}")
    a, s = np.asarray(alpha, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    zero, one = np.zeros_like(a), np.ones_like(a)
    if sigma_data is not None and prediction_type not in EDM_PREDICTION_TYPES:
        raise ValueError(f"EDM preconditioning (sigma_data) supports prediction_type {EDM_PREDICTION_TYPES}, "
                         f"got {prediction_type!r}")
    with np.errstate(divide="ignore", invalid="ignore"):
        if target == "noise" and prediction_type == "epsilon" and sigma_data is None:
            return zero, one
        # data prediction x0 = dx * x + do * output
        if sigma_data is not None:
            norm = s * s + sigma_data**2
            dx, do = sigma_data**2 / norm, s * sigma_data / np.sqrt(norm)
            do = do if prediction_type == "epsilon" else -do
        elif prediction_type == "epsilon":
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
