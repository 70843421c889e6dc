"""Start a multi-label model at the label frequencies instead of at 0.5.

A freshly initialized sigmoid head outputs about 0.5 for every label. With rare labels the
first epochs are spent pushing every output down, and short runs end with no probability
above 0.5. Setting each output's bias to the log-odds of its label's training frequency
makes the untrained model predict the prior, so training starts from calibrated
probabilities and learns the image evidence on top of them (Lin et al., "Focal Loss for
Dense Object Detection", 2017, section 4.1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["label_prior_logits", "init_output_bias"]


def label_prior_logits(targets: np.ndarray, eps: float = 0.5) -> torch.Tensor:
    """Log-odds of each label's frequency in multi-hot `targets` (N, C), smoothed by `eps`
    pseudo-counts so labels seen never (or always) get a finite bias.

    Example:
        >>> label_prior_logits(np.array([[1, 0], [0, 0], [0, 0], [0, 0]]))
        tensor([-0.8473, -2.1972])
    """
    t = np.asarray(targets, dtype=np.float64)
    p = (t.sum(0) + eps) / (len(t) + 2 * eps)
    return torch.tensor(np.log(p / (1 - p)), dtype=torch.float32)


def _output_layer(model: nn.Module, n_out: int) -> nn.Linear | nn.Conv2d | None:
    """The last Linear (or 1x1 Conv2d) with `n_out` outputs and a bias: the classifier."""
    found = None
    for m in model.modules():
        width = getattr(m, "out_features", getattr(m, "out_channels", None))
        if isinstance(m, (nn.Linear, nn.Conv2d)) and width == n_out and m.bias is not None:
            found = m
    return found


def init_output_bias(model: nn.Module, targets: np.ndarray) -> bool:
    """Set the classifier's bias to the label log-odds of `targets`; False when the model has
    no recognizable output layer with a bias (it is then left as it is)."""
    layer = _output_layer(model, np.asarray(targets).shape[1])
    if layer is None:
        return False
    with torch.no_grad():
        layer.bias.copy_(label_prior_logits(targets).to(layer.bias))
    return True
