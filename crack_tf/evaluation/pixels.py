"""Pixel-level metrics of crack maps against masks (heatmap evaluation, ``tools/heatmap_eval.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2r+1)^2 square (Chebyshev distance <= r): a separable maximum filter,
    O(pixels x r) where ``binary_dilation`` with the square would be O(pixels x r^2)."""
    if radius <= 0:
        return mask.astype(bool)
    return ndimage.maximum_filter(np.asarray(mask, np.uint8), size=2 * radius + 1, mode="constant") > 0


def pixel_metrics(prob_map: np.ndarray, mask: np.ndarray, threshold: float = 0.5,
                  tolerance: int = 64) -> dict:
    """Pixel IoU / F1 of ``prob_map > threshold`` against a UAV75 mask (channel 0 or 2-D).

    Mask values: 255 = crack (positive); 204 = planking joint and 0 = background (negative).
    Strict: every pixel counts. Tolerant (labels are 1-3 px lines): a crack pixel is found if
    a predicted pixel lies within ``tolerance`` px (Chebyshev); a predicted pixel is correct if a
    crack pixel lies within ``tolerance`` px; F1 from those recall / precision, IoU = F1/(2-F1).
    Also the fraction of planking-joint pixels predicted positive. Returns the counts too, so
    several photos can be pooled with :func:`pool_metrics`.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != prob_map.shape:
        raise ValueError(f"mask shape {mask.shape} != map shape {prob_map.shape}")
    crack, joint, pred = mask == 255, mask == 204, prob_map > threshold
    near_crack, near_pred = _dilate(crack, tolerance), _dilate(pred, tolerance)
    counts = {
        "tp": int((pred & crack).sum()), "fp": int((pred & ~crack).sum()), "fn": int((~pred & crack).sum()),
        "crack_found": int((crack & near_pred).sum()), "crack": int(crack.sum()),
        "pred_near_crack": int((pred & near_crack).sum()), "pred": int(pred.sum()),
        "joint_pred": int((joint & pred).sum()), "joint": int(joint.sum()),
    }
    return pool_metrics([counts])


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def pool_metrics(items: Sequence[dict]) -> dict:
    """Sums the counts of several photos and recomputes the metrics (micro average)."""
    keys = ("tp", "fp", "fn", "crack_found", "crack", "pred_near_crack", "pred", "joint_pred", "joint")
    c = {k: sum(int(it[k]) for it in items) for k in keys}
    recall_t, precision_t = _ratio(c["crack_found"], c["crack"]), _ratio(c["pred_near_crack"], c["pred"])
    f1_t = _ratio(2 * precision_t * recall_t, precision_t + recall_t)
    return {
        **c,
        "iou": _ratio(c["tp"], c["tp"] + c["fp"] + c["fn"]),
        "f1": _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"]),
        "tolerant_recall": recall_t, "tolerant_precision": precision_t, "tolerant_f1": f1_t,
        "tolerant_iou": _ratio(f1_t, 2 - f1_t),
        "joint_positive_rate": _ratio(c["joint_pred"], c["joint"]),
    }


