"""An independent PyTorch (functional) statement of the DeepGIN generator, for tests only.

It follows the spec (sections 1-3) with torch's own ops on a reference-format state dict, so the
Flax modules and the converter can be checked against it on the same weights.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

COARSE_RATES = (2, 3, 4, 5, 6, 8, 10, 1)
REFINE_RATES = (2, 3, 4, 5)


def conv(sd: dict, name: str, x: torch.Tensor, stride: int = 1, pad: int = 0, dilation: int = 1):
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], stride=stride, dilation=dilation)


def lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def up(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


def spd_block(sd: dict, prefix: str, x: torch.Tensor, rates, fusion: str) -> torch.Tensor:
    branches = [
        F.relu(conv(sd, f"{prefix}.branch{i}.conv", x, pad=r, dilation=r))
        for i, r in enumerate(rates, start=1)
    ]
    return x + conv(sd, f"{prefix}.{fusion}.conv", torch.cat(branches, 1), pad=1)


def self_attention(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape

    def project(name: str) -> torch.Tensor:
        return conv(sd, f"{prefix}.{name}", x).reshape(n, c // 2, h * w)

    theta, phi, g = project("theta"), project("phi"), project("g")
    attention = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)  # [n, hw(query), hw(key)]
    y = (attention @ g.transpose(1, 2)).transpose(1, 2).reshape(n, c // 2, h, w)
    return x + conv(sd, f"{prefix}.W", y)


def back_projection(
    raw: torch.Tensor, alpha: torch.Tensor, lowres: torch.Tensor, known, mask
) -> torch.Tensor:
    composed = raw * mask + known * (1 - mask)
    residual = lowres - up(composed, 0.25)
    return composed + up(residual, 4) * alpha


def generator(sd: dict, masked: torch.Tensor, mask: torch.Tensor):
    """Returns (completed, reconstructed, coarse, lowres), NCHW."""
    s = "lr_coarse_tinker"
    x = torch.cat([masked, mask], 1)
    x = lrelu(conv(sd, f"{s}.1", x, pad=3))
    for index in (4, 7, 10):
        x = lrelu(conv(sd, f"{s}.{index}", x, stride=2, pad=1))
    for index in range(12, 18):
        x = spd_block(sd, f"{s}.{index}", x, COARSE_RATES, "fusion9")
    for index in (20, 24, 28):
        x = lrelu(conv(sd, f"{s}.{index}", up(x, 2), pad=1))
    coarse = conv(sd, f"{s}.31", x, pad=3)

    y = torch.cat([coarse * mask + masked * (1 - mask), mask], 1)
    e1 = lrelu(conv(sd, "r_en_conv1", y, pad=3))
    e2 = lrelu(conv(sd, "r_en_conv2", e1, stride=2, pad=1))
    e3 = lrelu(conv(sd, "r_en_conv3", e2, stride=2, pad=1))
    e4 = lrelu(conv(sd, "r_en_conv4", e3, stride=2, pad=1))
    m = lrelu(conv(sd, "r_en_conv5", e4, stride=2, pad=1))
    de3 = self_attention(sd, "r_de_satn3", lrelu(conv(sd, "r_en_skp_conv3", e3, pad=1)))
    de4 = self_attention(sd, "r_de_satn2", lrelu(conv(sd, "r_en_skp_conv4", e4, pad=1)))
    for name in ("r_md_mres1", "r_md_mres2", "r_md_mres5"):
        m = spd_block(sd, name, m, REFINE_RATES, "fusion5")
    m = self_attention(sd, "r_md_satn1", m)
    for name in ("r_md_mres3", "r_md_mres4", "r_md_mres6"):
        m = spd_block(sd, name, m, REFINE_RATES, "fusion5")
    d1 = lrelu(conv(sd, "r_de_conv1", up(m, 2), pad=1))
    md1 = lrelu(conv(sd, "r_de_mix_conv1", torch.cat([d1, de4], 1), pad=1))
    d2 = lrelu(conv(sd, "r_de_conv2", up(md1, 2), pad=1))
    md2 = lrelu(conv(sd, "r_de_mix_conv2", torch.cat([d2, de3], 1), pad=1))
    lowres = conv(sd, "r_de_conv3_lr", lrelu(conv(sd, "r_de_conv2_lr", md2, pad=1)), pad=1)
    d3 = lrelu(conv(sd, "r_de_conv3", up(md2, 2), pad=1))
    d4 = lrelu(conv(sd, "r_de_conv4", up(d3, 2), pad=1))
    raw = conv(sd, "r_de_conv5", d4, pad=3)
    alpha = torch.sigmoid(conv(sd, "r_de_conv5_lr_alpha", d4, pad=1))
    reconstructed = back_projection(raw, alpha, lowres, masked, mask)
    completed = reconstructed * mask + masked * (1 - mask)
    return completed, reconstructed, coarse, lowres


def generator_state_dict_shapes(ngf: int = 64) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the reference generator's state dict (spec 8.3) at width `ngf`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def add(name: str, out_c: int, in_c: int, k: int) -> None:
        shapes[f"{name}.weight"] = (out_c, in_c, k, k)
        shapes[f"{name}.bias"] = (out_c,)

    s = "lr_coarse_tinker"
    add(f"{s}.1", ngf // 2, 4, 7)
    add(f"{s}.4", ngf, ngf // 2, 4)
    add(f"{s}.7", 2 * ngf, ngf, 4)
    add(f"{s}.10", 4 * ngf, 2 * ngf, 4)
    for index in range(12, 18):
        for b in range(1, 9):
            add(f"{s}.{index}.branch{b}.conv", 4 * ngf // 8, 4 * ngf, 3)
        add(f"{s}.{index}.fusion9.conv", 4 * ngf, 4 * ngf, 3)
    add(f"{s}.20", 2 * ngf, 4 * ngf, 3)
    add(f"{s}.24", ngf, 2 * ngf, 3)
    add(f"{s}.28", ngf // 2, ngf, 3)
    add(f"{s}.31", 3, ngf // 2, 7)
    add("r_en_conv1", ngf // 2, 4, 7)
    add("r_en_conv2", ngf, ngf // 2, 4)
    add("r_en_conv3", 2 * ngf, ngf, 4)
    add("r_en_skp_conv3", ngf, 2 * ngf, 3)
    add("r_en_conv4", 4 * ngf, 2 * ngf, 4)
    add("r_en_skp_conv4", 2 * ngf, 4 * ngf, 3)
    add("r_en_conv5", 8 * ngf, 4 * ngf, 4)
    for index in (1, 2, 5, 3, 4, 6):
        for b in range(1, 5):
            add(f"r_md_mres{index}.branch{b}.conv", 2 * ngf, 8 * ngf, 3)
        add(f"r_md_mres{index}.fusion5.conv", 8 * ngf, 8 * ngf, 3)
    for name, c in (("r_md_satn1", 8 * ngf), ("r_de_satn2", 2 * ngf), ("r_de_satn3", ngf)):
        for proj in ("g", "theta", "phi"):
            add(f"{name}.{proj}", c // 2, c, 1)
        add(f"{name}.W", c, c // 2, 1)
    add("r_de_conv1", 4 * ngf, 8 * ngf, 3)
    add("r_de_mix_conv1", 4 * ngf, 6 * ngf, 3)
    add("r_de_conv2", 2 * ngf, 4 * ngf, 3)
    add("r_de_mix_conv2", 2 * ngf, 3 * ngf, 3)
    add("r_de_conv2_lr", ngf // 2, 2 * ngf, 3)
    add("r_de_conv3_lr", 3, ngf // 2, 3)
    add("r_de_conv3", ngf, 2 * ngf, 3)
    add("r_de_conv4", ngf // 2, ngf, 3)
    add("r_de_conv5", 3, ngf // 2, 7)
    add("r_de_conv5_lr_alpha", 1, ngf // 2, 3)
    return shapes


def random_state_dict(ngf: int, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Order-one activations (the parity recipe): weights N(0, scale^2/fan_in), bias N(0, .01)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in generator_state_dict_shapes(ngf).items():
        std = scale / np.sqrt(np.prod(shape[1:])) if len(shape) == 4 else 0.1
        sd[key] = torch.from_numpy((rng.standard_normal(shape) * std).astype(np.float32))
    return sd
