"""Bias correction: cancel the systematic output shift that weight rounding causes.

Rounding a weight matrix leaves an error dW whose product with the layer's input does not
average out: E[dW x] = dW E[x], and post-activation inputs have non-zero channel means. That
shift moves every output of the channel the same way (PP-OCR's detector then grows or
shrinks its text regions by a pixel). With the per-channel input means from calibration the
expected shift is subtracted from the bias (Nagel et al., "Data-Free Quantization", 2019,
empirical variant). Only where the shift is the same at every output position: 1x1 (or
unpadded) convolutions, MatMul and Gemm. In a padded kxk convolution the border pixels see
fewer taps, and on PP-OCR's small deep feature maps (20x20 with 5x5 depthwise kernels, a third
of the pixels are border) a single corrected bias made the detector measurably worse.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def expected_shift(node: gs.Node, w: np.ndarray, w_hat: np.ndarray, mean: np.ndarray | None) -> np.ndarray | None:
    """E[(w_hat - w) x] per output channel, or None when it cannot be computed."""
    if mean is None:
        return None
    dw = (w_hat.astype(np.float64) - w.astype(np.float64))
    mean = np.asarray(mean, np.float64)
    if node.op == "Conv" and w.ndim >= 3:
        padded = any(int(p) for p in node.attrs.get("pads", [])) or node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
        if padded and int(np.prod(w.shape[2:])) > 1:
            return None
        co, cig = dw.shape[:2]
        group = int(node.attrs.get("group", 1))
        if mean.shape != (cig * group,) or co % group:
            return None
        taps = dw.reshape(co, cig, -1).sum(axis=2)                     # [co, ci/g]
        per_group = mean.reshape(group, cig)
        return np.einsum("oc,oc->o", taps, per_group[np.arange(co) // (co // group)])
    if node.op == "MatMul" and w.ndim == 2 and mean.shape == (w.shape[0],):
        return dw.T @ mean
    if node.op == "Gemm" and w.ndim == 2:
        if node.attrs.get("transB", 0):
            return dw @ mean if mean.shape == (w.shape[1],) else None
        return dw.T @ mean if mean.shape == (w.shape[0],) else None
    return None


def weight_input_axis(node: gs.Node) -> int | None:
    """Axis of the activation input (index 0) that the weight contracts: where its means live."""
    if node.op == "Conv":
        return 1
    if node.op in ("MatMul", "Gemm") and not node.attrs.get("transA", 0):
        return -1
    return None
