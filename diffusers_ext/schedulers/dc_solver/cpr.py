"""Cascade polynomial regression (CPR, DC-Solver arXiv 2409.03755): compensation ratios for unseen
(NFE, guidance scale) from ratios calibrated on a grid of them.

The ratio of step ``s`` (1-based) of an NFE-step run with guidance scale w is a cubic in x = s / NFE,

    rho(s) = sum_{k=0..3} c_k x^k,   c_k = sum_{a=0..2} g_ka u^(2-a),   g_ka = sum_{b=0..2} w_kab v^(2-b)

with u = w / 12 and v = NFE / 50: 36 numbers ``w[k, a, b]`` (the layout of the paper's released
coefficients). Steps 1 and 2 have no compensation (ratio 1). The model is linear in ``w``, so fitting is one
least-squares solve.

Outside the fitted (NFE, guidance) range the inputs of the c_k polynomials are clamped to the range, with
a warning; extrapolated quadratics are not trusted. x = s / NFE uses the true NFE, clamped to the x range the
fit saw (from 3 / largest fitted NFE to 1), so early steps of long runs do not extrapolate the cubic.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

NUM_COEFFICIENTS = 36
FIRST_COMPENSATED_STEP = 2  # 0-based: compensation interpolates through three buffered outputs


def _features(nfe: np.ndarray, guidance: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(n, 36) design matrix: x^k u^(2-a) v^(2-b) in the order of ``w.reshape(-1)``."""
    u, v = guidance / 12.0, nfe / 50.0
    xk = np.stack([x**k for k in range(4)], axis=-1)  # (n, 4)
    ua = np.stack([u**2, u, np.ones_like(u)], axis=-1)  # (n, 3)
    vb = np.stack([v**2, v, np.ones_like(v)], axis=-1)  # (n, 3)
    return (xk[:, :, None, None] * ua[:, None, :, None] * vb[:, None, None, :]).reshape(len(x), -1)


@dataclass
class CascadePolynomialRegression:
    """Fitted CPR: ``ratios(nfe, guidance)`` gives one ratio per step. JSON-able via ``to_config``."""

    coefficients: np.ndarray  # (4, 3, 3)
    nfe_range: tuple[float, float]
    guidance_range: tuple[float, float]
    fit_rmse: float | None = None

    def __post_init__(self):
        coefficients = np.asarray(self.coefficients, dtype=np.float64)
        if coefficients.size != NUM_COEFFICIENTS or not np.all(np.isfinite(coefficients)):
            raise ValueError(f"CPR needs {NUM_COEFFICIENTS} finite coefficients, got {coefficients.size}"
                             + ("" if coefficients.size != NUM_COEFFICIENTS else " with non-finite values"))
        self.coefficients = coefficients.reshape(4, 3, 3)
        for name in ("nfe_range", "guidance_range"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not lo <= hi:
                raise ValueError(f"CPR {name} must be [low, high] with low <= high, got {[lo, hi]}")
            setattr(self, name, (lo, hi))

    # ------------------------------------------------------------------------------ evaluation
    def ratios(self, nfe: int, guidance_scale: float) -> np.ndarray:
        """Compensation ratio of every step of an ``nfe``-step run (the first two are 1)."""
        if not (isinstance(nfe, (int, np.integer)) and nfe >= 1):
            raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
        nfe_c = float(np.clip(nfe, *self.nfe_range))
        g_c = float(np.clip(guidance_scale, *self.guidance_range))
        if nfe_c != nfe or g_c != guidance_scale:
            warnings.warn(f"CPR fitted on NFE {list(self.nfe_range)} and guidance {list(self.guidance_range)}; "
                          f"(NFE {nfe}, guidance {guidance_scale}) is outside, so its coefficient polynomials are "
                          f"evaluated at the clamped (NFE {nfe_c:g}, guidance {g_c:g})", stacklevel=2)
        steps = np.arange(1, nfe + 1, dtype=np.float64)
        x = np.clip(steps / nfe, (FIRST_COMPENSATED_STEP + 1) / self.nfe_range[1], 1.0)  # the fitted x range
        feats = _features(np.full(nfe, nfe_c), np.full(nfe, g_c), x)
        out = feats @ self.coefficients.reshape(-1)
        out[:FIRST_COMPENSATED_STEP] = 1.0
        return out

    # ------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, calibrated: Mapping[tuple[int, float], list[float]]) -> CascadePolynomialRegression:
        """Least-squares fit to ``{(nfe, guidance): ratios of every step}`` (steps 0, 1 are ignored)."""
        if not calibrated:
            raise ValueError("CPR.fit needs calibrated ratios for at least one (nfe, guidance)")
        nfe, guid, x, y = [], [], [], []
        for (n, g), ratios in calibrated.items():
            ratios = np.asarray(ratios, dtype=np.float64)
            if len(ratios) != n:
                raise ValueError(f"calibrated ratios for NFE {n} must have {n} entries, got {len(ratios)}")
            for s in range(FIRST_COMPENSATED_STEP, n):
                nfe.append(n)
                guid.append(g)
                x.append((s + 1) / n)
                y.append(ratios[s])
        if not y:
            raise ValueError("no compensated steps to fit: every NFE is below 3")
        nfe, guid, x, y = (np.asarray(a, dtype=np.float64) for a in (nfe, guid, x, y))
        design = _features(nfe, guid, x)
        w, *_ = np.linalg.lstsq(design, y, rcond=None)
        rmse = float(np.sqrt(np.mean((design @ w - y) ** 2)))
        return cls(w, (nfe.min(), nfe.max()), (guid.min(), guid.max()), fit_rmse=rmse)

    # ------------------------------------------------------------------------------ serialization
    def to_config(self) -> dict:
        return {"coefficients": self.coefficients.reshape(-1).tolist(), "nfe_range": list(self.nfe_range),
                "guidance_range": list(self.guidance_range), "fit_rmse": self.fit_rmse}

    @classmethod
    def from_config(cls, config: Mapping) -> CascadePolynomialRegression:
        if not isinstance(config, Mapping):
            raise ValueError(f"a CPR config is a dict with 'coefficients', 'nfe_range', 'guidance_range'; got "
                             f"{type(config).__name__}")
        missing = [k for k in ("coefficients", "nfe_range", "guidance_range") if k not in config]
        if missing:
            raise ValueError(f"CPR config misses {missing}; it needs 'coefficients' (36 numbers), 'nfe_range' and "
                             f"'guidance_range'")
        return cls(np.asarray(config["coefficients"], dtype=np.float64), tuple(config["nfe_range"]),
                   tuple(config["guidance_range"]), config.get("fit_rmse"))
