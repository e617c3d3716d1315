"""Small network builders shared by the models: MLPs and SPAIR's convolutional backbone.

Initialization everywhere follows the authors' TF defaults: Glorot-uniform weights, zero biases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F


def glorot_(module: nn.Module) -> nn.Module:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class MLP(nn.Sequential):
    """Linear layers with ReLU between them and a linear output: ``MLP(in, [h1, h2], out)``."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: type[nn.Module] = nn.ReLU):
        layers: list[nn.Module] = []
        d = n_in
        for h in hidden:
            layers += [nn.Linear(d, h), activation()]
            d = h
        layers.append(nn.Linear(d, n_out))
        super().__init__(*layers)
        glorot_(self)


def prime_factors(n: int) -> list[int]:
    out, d = [], 2
    while d * d <= n:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1
    if n > 1:
        out.append(n)
    return out


def right_only_pad(n: int, kernel: int, stride: int) -> int:
    """TF-style padding that puts everything after the data (spec section 3.1)."""
    return max(kernel - stride, 0) if n % stride == 0 else max(kernel - n % stride, 0)


def _conv_right_padded(conv: nn.Conv2d, x: torch.Tensor, s: int, ph: int, pw: int) -> torch.Tensor:
    """``conv(F.pad(x, (0, pw, 0, ph)))`` without the padded copy of ``x``: the convolution pads both
    sides by ``ph``, ``pw`` rounded up to a multiple of the stride (inside oneDNN, no copy), and the
    leading rows and columns that padding adds are dropped. Same outputs (bit for bit on even sizes;
    within float rounding otherwise); at 256×256 it saves copying a 270 MB feature map per batch of 32.
    Used for inference only, so that training keeps the numerics of the explicit padding."""
    (kh, kw), (H, W) = conv.kernel_size, x.shape[-2:]
    Ph, Pw = -(-ph // s) * s, -(-pw // s) * s
    y = F.conv2d(x, conv.weight, conv.bias, stride=s, padding=(Ph, Pw))
    oh, ow = (H + ph - kh) // s + 1, (W + pw - kw) // s + 1
    return y[..., Ph // s:Ph // s + oh, Pw // s:Pw // s + ow]


class Backbone(nn.Module):
    """SPAIR's convolutional encoder e^conv (spec section 3.1): image → one feature vector per cell.

    Strided 4×4 convs whose strides are the sorted prime factors of the cell size (12 → 2, 2, 3),
    each with right/bottom-only zero padding, so an H×W image gives a ⌈H/c⌉×⌈W/c⌉ grid; then
    ``n_final_layers`` stride-1 k×k convs (TF "SAME" padding, the extra pixel of an even kernel
    after the data). ReLU everywhere except the last layer; no normalization layers.
    """

    def __init__(self, cell_size: int = 12, channels: int = 128, n_features: int = 100,
                 n_final_layers: int = 3, kernel_size: int = 1, in_channels: int = 3):
        super().__init__()
        self.cell_size = cell_size
        self.kernel_size = kernel_size
        self.strides = sorted(prime_factors(cell_size)) if cell_size > 1 else []
        self.strided = nn.ModuleList()
        c = in_channels
        for s in self.strides:
            self.strided.append(nn.Conv2d(c, channels, 4, stride=s))
            c = channels
        self.final = nn.ModuleList()
        for i in range(n_final_layers):
            last = i == n_final_layers - 1
            self.final.append(nn.Conv2d(c, n_features if last else channels, kernel_size))
            c = channels
        glorot_(self)

    def grid_shape(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.cell_size), -(-w // self.cell_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, s in zip(self.strided, self.strides):
            ph = right_only_pad(x.shape[-2], 4, s)
            pw = right_only_pad(x.shape[-1], 4, s)
            if torch.is_grad_enabled():
                x = F.relu(conv(F.pad(x, (0, pw, 0, ph))))
            else:
                x = F.relu(_conv_right_padded(conv, x, s, ph, pw))
        k = self.kernel_size
        for i, conv in enumerate(self.final):
            if k > 1:
                total = k - 1
                x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
            x = conv(x)
            if i < len(self.final) - 1:
                x = F.relu(x)
        return x
