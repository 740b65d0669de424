"""Batched training augmentation on the device: what MNIST lacks and users send (tilt, slant, size, position,
wobbly strokes, thin and thick pens, faint ink, noise, blur).

``augment(x, strength, policy, generator)`` takes a float batch in [0, 1] (``model.to_input``'s output) and
returns one of the same shape, on the same device, in a fixed number of batched tensor operations (no per-image
Python, no host sync). Policies:

- ``affine`` (the recipe until issue 12): shift up to 3 px, rotation up to 15 degrees, scale up to 15%, times
  ``strength`` (``data.augment_batch``).
- ``robust``: one ``grid_sample`` of an affine map (rotation, shear, scale, shift) plus an elastic field, then
  stroke width (a blend toward a 3x3 grey dilation or erosion), and on a share of the images low contrast on
  grey, Gaussian noise and blur. Magnitudes are drawn per image as ``strength * range * u**2 * sign`` with
  ``u`` uniform: most images change a little, a few up to the full range, so the clean digits are not lost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from digits.learn.data import augment_batch

__all__ = ["POLICIES", "augment"]

POLICIES = ("affine", "robust")

# Full ranges at strength 1 (the default strength 0.5 halves the largest draws, not the typical ones).
_ROTATE = math.radians(45)
_SHEAR = 0.6
_LOG_SCALE = math.log(1.8)  # 1/1.8 to 1.8 times as large
_SHIFT = 8 / 14  # 8 px, in affine_grid's [-1, 1] units (one pixel = 2/28)
_ELASTIC = 3.0 / 14  # 3 px of local displacement
_SHARE = 0.5  # of the images at strength 1 that also get a photometric corruption (each drawn on its own)


def augment(
    x: torch.Tensor, strength: float, policy: str = "robust", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a float batch (N, 1, 28, 28) in [0, 1] with ``policy`` at ``strength`` in [0, 1]; 0 returns ``x``."""
    if strength <= 0:
        return x
    if policy == "affine":
        return augment_batch(x, strength, generator)
    if policy != "robust":
        raise ValueError(f"unknown augmentation policy {policy!r}: expected one of {', '.join(POLICIES)}")
    x = _warp(x, strength, generator)
    x = _stroke(x, strength, generator)
    return _photometric(x, strength, generator)


def _draw(n: int, k: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(n, k) signed magnitudes in [-1, 1], concentrated near 0 (u**2 with a random sign)."""
    u = torch.rand(n, k, device=x.device, generator=generator) * 2 - 1
    return u * u.abs()


def _warp(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    n = x.shape[0]
    m = _draw(n, 6, x, generator) * strength
    angle, shear, log_scale = m[:, 0] * _ROTATE, m[:, 1] * _SHEAR, m[:, 2] * _LOG_SCALE
    shift = m[:, 3:5] * _SHIFT
    cos, sin, inv = torch.cos(angle), torch.sin(angle), torch.exp(-log_scale)  # affine_grid maps output to input
    a, b = cos * inv, (-sin + shear * cos) * inv
    c, d = sin * inv, (cos + shear * sin) * inv
    theta = torch.stack([torch.stack([a, b, shift[:, 0]], 1), torch.stack([c, d, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # Elastic: a random 4x4 field of displacements, smoothly interpolated to 28x28 (Simard et al.'s idea, batched).
    field = (torch.rand(n, 2, 4, 4, device=x.device, generator=generator) * 2 - 1) * (_ELASTIC * strength)
    field = field * m[:, 5:6, None, None].abs()
    grid = grid + F.interpolate(field, size=x.shape[-2:], mode="bicubic", align_corners=False).permute(0, 2, 3, 1).to(
        x.dtype
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _stroke(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """Blend each image toward its 3x3 grey dilation (w > 0: a thicker pen) or erosion (w < 0: a thinner one)."""
    w = (_draw(x.shape[0], 1, x, generator) * min(1.0, 2 * strength)).view(-1, 1, 1, 1)
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return torch.where(w > 0, x + w * (thick - x), x + (-w) * (thin - x))


def _photometric(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """On a share of the images each: contrast cut to 20-100% on a grey background, Gaussian noise, blur."""
    n = x.shape[0]
    r = torch.rand(n, 6, device=x.device, generator=generator)
    share = _SHARE * strength
    view = (-1, 1, 1, 1)
    contrast = torch.where(r[:, 0] < share, 0.2 + 0.8 * r[:, 1], torch.ones_like(r[:, 1])).view(view)
    background = (1 - contrast) * 0.4 * r[:, 2].view(view)
    x = x * contrast + background
    sigma = torch.where(r[:, 3] < share, 0.25 * r[:, 4], torch.zeros_like(r[:, 4])).view(view)
    x = x + sigma * torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    amount = torch.where(r[:, 5] < share, r[:, 5] / share, torch.zeros_like(r[:, 5])).view(view)
    return (x + amount * (blurred - x)).clamp_(0, 1)
