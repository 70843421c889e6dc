"""Batch norm folded into the convolution before it, for inference.

In eval mode a BatchNorm2d right after a Conv2d is an affine map per channel, so it can live
in the convolution's weights and bias: one pass over the activations instead of two. On a
CPU batch norm is a large share of a small CNN's time (docs/performance.md).

Which convolution feeds which norm is read from one forward pass, not guessed from module
names or order: autograd's graph says whose output each norm consumed and whether anything
else consumed it too. Only plain convolutions and norms are folded (timm's `BatchNormAct2d`
keeps its dropout and activation), and the folded model is checked against the original on
random input; any difference beyond float rounding keeps the original.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["fuse_batchnorm"]

# Convolutions whose forward is a plain (possibly padded) convolution of their weight; a
# weight-standardized conv (timm's StdConv2d) re-normalizes its weight and is left alone.
_PLAIN_CONV_FORWARDS = {nn.Conv2d.forward}
try:  # timm's "same"-padding conv pads, then runs conv2d on its own weight
    from timm.layers import Conv2dSame
    _PLAIN_CONV_FORWARDS.add(Conv2dSame.forward)
except ImportError:  # pragma: no cover - timm is a dependency
    pass


def _plain_conv(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and type(m).forward in _PLAIN_CONV_FORWARDS


def _norm_replacement(bn: nn.Module) -> nn.Module | None:
    """What stays of an eval-mode norm once folded: nothing, or timm's dropout + activation."""
    if not (isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and bn.running_mean is not None):
        return None
    if type(bn) in (nn.BatchNorm2d, nn.SyncBatchNorm):
        return nn.Identity()
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:  # pragma: no cover
        return None
    if type(bn).forward is BatchNormAct2d.forward:  # BatchNormAct2d and its Sync twin
        return nn.Sequential(bn.drop, bn.act)
    return None


def _pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, norm) where the norm's only input is the conv's output, used nowhere else."""
    conv_node, norm_input, calls = {}, {}, Counter()

    def on_conv(m, inputs, out):
        calls[m] += 1
        conv_node[m] = out.grad_fn

    def on_norm(m, inputs, out):
        calls[m] += 1
        norm_input[m] = inputs[0].grad_fn

    hooks = [m.register_forward_hook(on_conv) for m in model.modules() if _plain_conv(m)]
    hooks += [m.register_forward_hook(on_norm) for m in model.modules()
              if _norm_replacement(m) is not None]
    try:
        with torch.enable_grad():
            out = model(example.requires_grad_())
    finally:
        for h in hooks:
            h.remove()
    # How many graph nodes consume each node's output (a conv output feeding a shortcut too
    # must not be changed).
    users: Counter = Counter()
    seen, stack = set(), [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is not None:
                users[nxt] += 1
                stack.append(nxt)
    by_node = {node: conv for conv, node in conv_node.items()
               if node is not None and calls[conv] == 1}
    return [(by_node[node], norm) for norm, node in norm_input.items()
            if node in by_node and calls[norm] == 1 and users[node] == 1]


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> bool:
    """Put `new` where `old` is registered; False if `old` is registered more than once."""
    places = [(parent, name) for parent in model.modules()
              for name, child in parent.named_children() if child is old]
    if len(places) != 1:
        return False
    setattr(places[0][0], places[0][1], new)
    return True


@torch.no_grad()
def _fold(model: nn.Module, pairs: list[tuple[nn.Module, nn.Module]]) -> int:
    done = 0
    for conv, bn in pairs:
        if not _replace(model, bn, _norm_replacement(bn)):
            continue
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                    bn.eps, bn.weight, bn.bias)
        conv.weight, conv.bias = w, b
        done += 1
    return done


def fuse_batchnorm(model: nn.Module, size: int, rtol: float = 1e-4) -> tuple[nn.Module, int]:
    """(model with each conv -> batch norm pair folded, how many were folded).

    `model` must be in eval mode; it is not changed. The folded copy is returned only if its
    outputs on random `size`x`size` input match the original's to `rtol` of their range;
    otherwise (or with nothing to fold, or a model the check cannot run) `model` itself.
    """
    if model.training:
        raise ValueError("fuse_batchnorm folds the running statistics: call model.eval() first")
    if not any(_norm_replacement(m) is not None for m in model.modules()):
        return model, 0  # a transformer, say: no copy, no trial run
    device = next(model.parameters(), torch.empty(0)).device
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        names = {m: name for name, m in model.named_modules(remove_duplicate=False)}
        pairs = [(names[c], names[b]) for c, b in _pairs(model, x.clone())]
        if not pairs:
            return model, 0
        fused = copy.deepcopy(model)
        n = _fold(fused, [(fused.get_submodule(c), fused.get_submodule(b)) for c, b in pairs])
        if n == 0:
            return model, 0
        with torch.inference_mode():
            want, got = _tensors(model(x)), _tensors(fused(x))
    except Exception:  # a model this check cannot run keeps its own layers
        return model, 0
    for a, b in zip(want, got):
        scale = float(a.abs().max()) if a.numel() else 0.0
        if a.shape != b.shape or float((a - b).abs().max()) > rtol * max(1.0, scale):
            return model, 0
    return fused, n
