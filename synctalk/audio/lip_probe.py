"""How much the real mouth can be read linearly from per-frame audio inputs, on frames a fit never saw.

A ridge regression from the inputs of each frame (mel windows, band energy, or the audio encoder's
features: whatever the caller passes) to the real outer-lip height (``synctalk.audio.mouth.lip_height``),
fitted on the train split and scored on the test split: Pearson r on both, and the test predictions'
spread over the real one's. Two uses:

- a reference for the renders' ``mouth_motion`` r (``synctalk.metrics.mouth_motion``): what a mouth
  driven by that audio could reach with a linear map;
- a leakage check of the subject-trained audio encoder: its features of the *training* audio were fitted
  to those very frames, so an r far higher on train than on test says they describe the training mouths
  better than any new audio's, which a NeRF fitted on them can key on.
"""

from __future__ import annotations

import numpy as np

PROBE_COMPONENTS = 64   # principal components of the input kept before the fit
PROBE_RIDGE = 10.0      # ridge weight on standardised components


def pca(x: np.ndarray, train: np.ndarray, k: int) -> np.ndarray:
    """``x`` [N, D] projected on the first ``k`` principal axes of its ``train`` rows (centred on them)."""
    centred = np.asarray(x, np.float64) - np.asarray(x, np.float64)[train].mean(0)
    _, _, vt = np.linalg.svd(centred[train], full_matrices=False)
    return centred @ vt[:k].T


def ridge_scores(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                 lam: float = PROBE_RIDGE) -> dict:
    """Standardise ``x`` on ``train``, fit ridge to ``y`` there; r on train and test, test std ratio."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
    z = (x - mu) / sd
    target = y[train] - y[train].mean()
    w = np.linalg.solve(z[train].T @ z[train] + lam * np.eye(z.shape[1]), z[train].T @ target)
    pred = z @ w + y[train].mean()
    return {"r_train": float(np.corrcoef(pred[train], y[train])[0, 1]),
            "r_test": float(np.corrcoef(pred[test], y[test])[0, 1]),
            "std_ratio_test": float(pred[test].std() / y[test].std())}


def lip_probe(inputs: np.ndarray, lip: np.ndarray, n_train: int, components: int = PROBE_COMPONENTS,
              lam: float = PROBE_RIDGE) -> dict | None:
    """``ridge_scores`` of ``inputs`` [N, D] (first ``components`` principal components) against the real
    lip height [N]; frames [0, n_train) fit, the rest score. None when either part is too small to say."""
    n = len(lip)
    if len(inputs) != n:
        raise ValueError(f"inputs cover {len(inputs)} frames, the lip heights {n}")
    train, test = np.arange(n_train), np.arange(n_train, n)
    if len(test) < 10 or len(train) < 2 * min(components, np.shape(inputs)[1]) or np.std(lip[test]) == 0:
        return None
    k = min(components, np.shape(inputs)[1])
    return {**ridge_scores(pca(inputs, train, k), lip, train, test, lam), "components": k}
