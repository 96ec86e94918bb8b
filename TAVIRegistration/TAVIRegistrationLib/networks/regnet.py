"""RegNet: the registration CNN that predicts a 2D affine from a (moving, fixed) mask pair.

The network of Li et al. ("Model-to-Image Registration via Deep Learning towards Image-Guided
Endovascular Interventions", Fig. 4), with the deviations named below:

* input 2 x 256 x 256: channel 0 the moving image (the model projection inside the ROI), channel 1
  the fixed image (the frame's vessel mask), both on the same square registration window, floats in
  [0, 1];
* nine convolutions of 32, 64, 64, 128, 128, 128, 128, 256, 256 filters (5x5 first, 3x3 after,
  zero padding keeping the size), each followed by batch norm and ReLU;
* 2x2 max-pooling after every other convolution (``pool_after``, see below);
* ``pool_before_fc``: an adaptive average pooling of the last feature maps to 4 x 4 before the
  first fully connected layer (a deviation: without it the first fully connected layer alone would
  hold 256 * 8 * 8 * 1024 = 16.8 M weights at a 256 input, with it 4.2 M, and the network accepts
  any input size that is a multiple of ``SIZE_MULTIPLE``);
* a fully connected layer of ``fc`` (1024) units with ReLU and a last one of 6 affine parameters,
  initialised to the identity (zero weights, bias [1, 0, 0, 0, 1, 0]): an untrained network
  returns the identity transform.

Pooling positions (``pool_after``, 1-based convolution numbers). The paper pools every other layer
from the third (3, 5, 7, 9), which keeps the first three convolutions at full resolution: about
9.4 G multiply-adds at 256 x 256, far too slow for the ~300 ms CPU budget of one frame. The default
here is ``(1, 3, 5, 7, 9)``: the same nine convolutions and the same every-other-layer rhythm, with
one more pooling after the first (5x5) convolution, about 2.4 G multiply-adds. ``pool_after=(3, 5,
7, 9)`` builds the paper's layout.

Output: ``theta`` (N, 2, 3) in ``torch.nn.functional.affine_grid`` conventions with
``align_corners=False`` (the module's ``align_corners`` attribute says so): for a point ``p_out`` of
the output grid, in normalised window coordinates (-1 = the left/top edge of the window, +1 = the
right/bottom edge), ``theta @ [p_out, 1]`` is where the moving image is sampled. Warping the moving
image with ``theta`` aligns it with the fixed image; the point map from the moving image to the
fixed one is therefore the inverse of ``theta``. ``registration.py`` converts to pixel matrices;
normalised coordinates never leave the network code.

Pure torch: no files, no masks, no pixel coordinates. TorchScript-scriptable; the scripted module
keeps ``architecture``, ``in_size``, ``fc_units``, ``pool_before_fc``, ``channels``, ``pool_after``
and ``align_corners`` as attributes. (No ``from __future__ import annotations`` here: TorchScript
reads the class annotations.)
"""

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHITECTURE = "RegNet"
#: Filters of the nine convolutions (Fig. 4).
CHANNELS = (32, 64, 64, 128, 128, 128, 128, 256, 256)
#: 1-based convolutions followed by 2x2 max-pooling (see the module docstring).
POOL_AFTER = (1, 3, 5, 7, 9)
PAPER_POOL_AFTER = (3, 5, 7, 9)
POOLED_SIZE = 4
IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class RegNet(nn.Module):
    """``forward(x)`` maps (N, 2, H, W) moving/fixed pairs to (N, 2, 3) affine_grid thetas."""

    architecture: str
    in_size: int
    fc_units: int
    pool_before_fc: bool
    channels: List[int]
    pool_after: List[int]
    align_corners: bool

    def __init__(self, in_size: int = 256, fc: int = 1024, pool_before_fc: bool = True,
                 channels: Sequence[int] = CHANNELS, pool_after: Sequence[int] = POOL_AFTER):
        super().__init__()
        channels = [int(c) for c in channels]
        pool_after = sorted({int(p) for p in pool_after})
        if len(channels) < 1 or min(channels) < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if any(p < 1 or p > len(channels) for p in pool_after):
            raise ValueError(f"pool_after must name convolutions 1-{len(channels)}, got {pool_after}")
        multiple = 2 ** len(pool_after)
        if int(in_size) < multiple * (1 if pool_before_fc else 1) or int(in_size) % multiple:
            raise ValueError(f"in_size must be a positive multiple of {multiple}, got {in_size}")
        self.architecture = ARCHITECTURE
        self.in_size = int(in_size)
        self.fc_units = int(fc)
        self.pool_before_fc = bool(pool_before_fc)
        self.channels = channels
        self.pool_after = pool_after
        self.align_corners = False
        layers: List[nn.Module] = []
        prev = 2
        for i, c in enumerate(channels, start=1):
            k = 5 if i == 1 else 3
            layers += [nn.Conv2d(prev, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            prev = c
        self.features = nn.Sequential(*layers)
        if self.pool_before_fc:
            self.pool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
            side = POOLED_SIZE
        else:
            self.pool = nn.Identity()
            side = self.in_size // multiple
        self.fc1 = nn.Linear(prev * side * side, self.fc_units)
        self.fc2 = nn.Linear(self.fc_units, 6)
        self.reset_to_identity()

    def reset_to_identity(self) -> None:
        """Zero weights and identity bias in the last layer: the network outputs the identity."""
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.copy_(torch.tensor(IDENTITY_THETA, dtype=self.fc2.bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.features(x))
        y = F.relu(self.fc1(torch.flatten(y, 1)))
        return self.fc2(y).view(-1, 2, 3)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def multiply_adds(model: RegNet, size: int = 0) -> int:
    """Multiply-adds of one forward pass at ``size`` x ``size`` (default: the model's input size)."""
    side = int(size or model.in_size)
    total = 0
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            total += side * side * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.MaxPool2d):
            side //= 2
    return int(total + model.fc1.in_features * model.fc1.out_features + model.fc2.in_features * 6)


def scaled_channels(width: float) -> List[int]:
    """Fig. 4's filters times ``width`` (at least 1 each); ``width=1`` is the paper's network."""
    return [max(1, int(round(c * float(width)))) for c in CHANNELS]


def script_model(model: RegNet) -> torch.jit.ScriptModule:
    """TorchScript version of ``model`` in eval mode (a CPU copy; the original is not changed)."""
    import copy
    import warnings

    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it is still supported
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
        return torch.jit.script(m)
