"""Projection and prediction heads, all built by one MLP builder."""

from __future__ import annotations

from torch import nn


def mlp(dims: list[int], last_bn: bool = False, hidden_bn: bool = True) -> nn.Sequential:
    """Linear -> BN -> ReLU for each hidden layer, then a plain Linear (optionally with BN).

    ``dims`` lists every width, input first: ``[512, 2048, 128]`` is a 2-layer MLP, and
    ``[512, 128]`` a linear map. ``hidden_bn=False`` drops the hidden BN (MoCo v2's head).
    """
    if len(dims) < 2:
        raise ValueError(f"an MLP needs at least input and output widths, got {dims}")
    layers: list[nn.Module] = []
    for width_in, width_out in zip(dims[:-2], dims[1:-1]):
        if hidden_bn:
            layers += [nn.Linear(width_in, width_out, bias=False), nn.BatchNorm1d(width_out)]
        else:
            layers.append(nn.Linear(width_in, width_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-2], dims[-1], bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(dims[-1], affine=False))
    return nn.Sequential(*layers)


def projection_head(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """SimCLR's g(.): "a MLP with one hidden layer to obtain z_i = g(h_i) = W2 relu(W1 h_i)"
    (Chen et al. 2020, Sec. 2.1); BN after the hidden layer as in the reference code."""
    return mlp([in_dim, hidden_dim, out_dim])
