"""A small model and CIFAR-shaped data whose Linf robustness is known in advance: a
check of an attack implementation on any device, in any precision.

The model computes one number per image, a weighted mean of its pixels ``m(x)`` (two
convolutions with positive weights that sum to one, ReLU, global average pooling),
and predicts the class whose centre ``c_k = (k + 0.5) / K`` is nearest:
``logits_k = -scale * (m(x) - c_k)^2`` (element-wise, no matrix product, so TF32 does
not touch the head). ``m`` is linear with positive weights summing to one, so an Linf
perturbation of size eps moves it by at most eps, and shifting every pixel by eps moves
it by exactly eps. An image at distance ``d`` from its class's nearest decision boundary
(``m = j / K``) is therefore robust at eps if ``d > eps`` and breakable if ``d < eps``
(when the pixels have room to move, which the data guarantee), whatever the attack:
a gradient attack finds the break in one step (every pixel's gradient has the same sign).

``known_answer_data`` builds images at chosen distances, leaving a gap of at least
``gap`` (default 0.005, against a rounding error of m below 1e-3 even in TF32) on the
right side of eps, so the clean and robust flags of *any* correct attack run are
determined exactly: on the CPU and on a GPU, in fp32 and in TF32, the flags must equal
the expected ones. (On an ordinary network, examples near the threshold can flip
between devices, and only the robust accuracy within a margin could be compared.)
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


class MeanIntensityNet(nn.Module):
    def __init__(self, num_classes: int = 10, scale: float = 1000.0, width: int = 16, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 3, bias=False)
        self.conv2 = nn.Conv2d(width, width, 3, stride=2, bias=False)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):  # positive, each output channel's weights sum to 1
                w = torch.rand(conv.weight.shape, generator=g) + 0.5
                conv.weight.copy_(w / w.sum(dim=(1, 2, 3), keepdim=True))
        self.register_buffer("centres", (torch.arange(num_classes, dtype=torch.float32) + 0.5) / num_classes)
        self.scale = scale

    def intensity(self, x: torch.Tensor) -> torch.Tensor:
        """m(x): a convex combination of the pixels (a weighted mean)."""
        out = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.scale * (self.intensity(x)[:, None] - self.centres) ** 2


def known_answer_data(model: MeanIntensityNet, n: int, eps: float, *, clean: float = 0.85, robust: float = 0.57,
                      image_size: int = 32, gap: float = 0.005, noise: float = 0.03,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, clean flags, robust flags) for ``n`` images: a fraction ``robust`` robust at
    ``eps``, ``clean - robust`` correctly classified but breakable, the rest misclassified
    (the defaults are the paper's WRN-34-10 levels, 85 % / 57 %). Pixels lie in
    [0, 1] with room to move by eps toward the boundary that matters."""
    k = len(model.centres)
    half = 0.5 / k  # distance from a centre to its boundaries
    if gap <= 0 or eps + gap > half - gap:
        raise ValueError(f"eps={eps} leaves no room in a class of width {2 * half} with gap {gap}")
    if not 0 <= robust <= clean <= 1:
        raise ValueError(f"need 0 <= robust <= clean <= 1, got robust={robust}, clean={clean}")
    g = torch.Generator().manual_seed(seed)
    n_robust, n_clean = round(n * robust), round(n * clean)
    kind = torch.zeros(n, dtype=torch.long)  # 0 robust, 1 breakable, 2 misclassified
    kind[n_robust:n_clean] = 1
    kind[n_clean:] = 2
    kind = kind[torch.randperm(n, generator=g)]
    y = torch.randint(0, k, (n,), generator=g)
    u = torch.rand(n, generator=g)
    # distance from the class's boundary, inside (positive) or beyond it (negative)
    d = torch.where(kind == 0, eps + gap + u * (half - eps - 2 * gap),  # robust: d in [eps + gap, half - gap]
        torch.where(kind == 1, gap + u * (eps - 2 * gap),              # breakable: d in [gap, eps - gap]
                    -(gap + u * (half - 2 * gap))))                    # misclassified: beyond, into the neighbour
    # toward an interior boundary: class 0 only upward, class k-1 only downward
    up = torch.where(y == 0, True, torch.where(y == k - 1, False, torch.rand(n, generator=g) < 0.5))
    centre = (y.float() + 0.5) / k
    target = torch.where(up, centre + half - d, centre - half + d)  # m(x) wanted
    x = 0.5 + noise * (2 * torch.rand(n, 3, image_size, image_size, generator=g) - 1)
    with torch.no_grad():  # m(x + c) = m(x) + c: shift every pixel to put m where it is wanted
        x = x + (target - copy.deepcopy(model).cpu().intensity(x))[:, None, None, None]
    if x.min() < 0 or x.max() > 1:
        raise ValueError("known_answer_data: pixels left [0, 1]; lower `noise`")
    return x, y, kind <= 1, kind == 0
