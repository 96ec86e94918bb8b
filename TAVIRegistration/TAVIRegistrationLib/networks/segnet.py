"""DRU-Net: the deep residual U-Net that segments vessels in a fluoroscopy frame.

The architecture of Li et al. ("Model-to-Image Registration via Deep Learning towards
Image-Guided Endovascular Interventions"), with the width as a parameter:

* input 1 x 256 x 256 (any size divisible by 16 works: the network is fully convolutional);
* encoder: four residual blocks of width c, 2c, 4c, 8c, each two 3x3 convolutions with batch norm
  and ReLU plus a residual (identity, or 1x1 convolution + batch norm where the width changes),
  each followed by 2x2 max-pooling;
* bottleneck: one residual block of width 16c at 1/16 of the input size;
* decoder: four stages, each a 2x2 transposed convolution (learned up-sampling, and deterministic
  on CUDA, unlike bilinear up-sampling's backward pass), concatenation with the matching encoder
  features and a residual block;
* a 1x1 convolution to one channel of logits (apply a sigmoid for the vessel probability).

Width: 32 base channels is 8.1 M parameters (too slow to train on a 2-core CPU); the shipped
network uses 8-16 (see ``count_parameters`` and ``tools/bench_widths.py``). A trained network
can be widened without changing its output (``widen_state_dict``), to fine-tune more channels
from it instead of training them from scratch.

This module is pure torch: it knows no files, no DICOM and no intensity scaling. The network is
TorchScript-scriptable; the scripted module keeps ``architecture``, ``base_channels``,
``in_channels``, ``out_channels`` and ``depth`` as attributes (``weights.load_network`` checks them
against the manifest) and exports ``forward_with_features`` (logits + bottleneck features) for
Grad-CAM. (No ``from __future__ import annotations`` here: TorchScript reads the class
annotations.)
"""

import re
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

ARCHITECTURE = "DRUNet"
#: The encoder halves the size four times: inputs must be multiples of this.
SIZE_MULTIPLE = 16


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
            )
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.skip(x))


class UpStage(nn.Module):
    """2x2 transposed convolution, concatenation with the encoder features, residual block."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.block = ResidualBlock(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.up(x), skip], dim=1))


class DRUNet(nn.Module):
    """Deep residual U-Net; ``forward(x)`` maps (N, 1, H, W) to (N, 1, H, W) logits."""

    architecture: str
    base_channels: int
    in_channels: int
    out_channels: int
    depth: int

    def __init__(self, base_channels: int = 16, in_channels: int = 1, out_channels: int = 1):
        super().__init__()
        if int(base_channels) < 1:
            raise ValueError(f"base_channels must be >= 1, got {base_channels}")
        c = int(base_channels)
        self.architecture = ARCHITECTURE
        self.base_channels = c
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.depth = 4
        widths = [c * 2 ** i for i in range(self.depth)]  # c, 2c, 4c, 8c
        encoders: List[nn.Module] = []
        prev = self.in_channels
        for w in widths:
            encoders.append(ResidualBlock(prev, w))
            prev = w
        self.encoders = nn.ModuleList(encoders)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ResidualBlock(prev, 2 * prev)
        decoders: List[nn.Module] = []
        prev = 2 * prev
        for w in reversed(widths):
            decoders.append(UpStage(prev, w, w))
            prev = w
        self.decoders = nn.ModuleList(decoders)
        self.head = nn.Conv2d(prev, self.out_channels, 1)

    @torch.jit.export
    def forward_with_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits and the bottleneck features (the Grad-CAM layer)."""
        skips: List[torch.Tensor] = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        feats = self.bottleneck(x)
        x = feats
        n = len(skips)
        for i, dec in enumerate(self.decoders):
            x = dec(x, skips[n - 1 - i])
        return self.head(x), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(x)[0]


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


def drunet_parameters(base_channels: int) -> int:
    """Parameter count of a DRU-Net of this width (builds it on the CPU)."""
    return count_parameters(DRUNet(base_channels))


def script_model(model: DRUNet) -> torch.jit.ScriptModule:
    """TorchScript version of ``model`` in eval mode (a CPU copy; the original is not changed)."""
    import copy
    import warnings

    m = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # torch 2.13 marks TorchScript deprecated; it is still supported
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=DeprecationWarning)
        return torch.jit.script(m)


def state_width(state: Dict[str, torch.Tensor]) -> int:
    """``base_channels`` of a DRU-Net state dict (the first convolution's output channels)."""
    return int(state["encoders.0.conv1.weight"].shape[0])


#: the convolutions whose input is ``cat([up(x), skip])`` (two halves of equal width)
_CONCAT_INPUT = re.compile(r"^decoders\.\d+\.block\.(conv1|skip\.0)$")


def widen_state_dict(state: Dict[str, torch.Tensor], model: DRUNet) -> Dict[str, torch.Tensor]:
    """``state`` (a narrower DRU-Net's weights) laid into ``model``'s wider shapes so that ``model``
    computes exactly what the narrow network did (in eval mode; function-preserving widening, as in
    Chen et al. 2016, Net2Net, with zeros instead of copies).

    Every layer keeps its old channels first. An old output channel reads its old inputs with its
    old weights and the new inputs with zero weights, so the new channels change nothing until
    training moves those zeros; a new output channel keeps ``model``'s fresh initialisation (its
    values reach no old channel). New batch-norm channels are the identity (weight 1, bias 0, mean 0,
    variance 1). Where a decoder block reads ``cat([up(x), skip])`` the old skip channels move to the
    start of the wider skip half. ``model`` itself is not changed. A state as wide as ``model`` is
    returned as it is; a wider one is refused (ValueError)."""
    old_c, new_c = state_width(state), int(model.base_channels)
    if old_c == new_c:
        return dict(state)
    if old_c > new_c:
        raise ValueError(f"a DRU-Net of width {old_c} cannot be widened to {new_c}")
    fresh = model.state_dict()
    if set(fresh) != set(state):
        raise ValueError("the weights are not those of a DRU-Net of this depth")
    out: Dict[str, torch.Tensor] = {}

    def in_index(name: str, old_in: int, new_in: int) -> torch.Tensor:
        if _CONCAT_INPUT.match(name):
            half_old, half_new = old_in // 2, new_in // 2
            return torch.cat([torch.arange(half_old), half_new + torch.arange(half_old)])
        return torch.arange(old_in)

    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            old_w, new_w = state[prefix + "weight"], fresh[prefix + "weight"].clone()
            transposed = isinstance(module, nn.ConvTranspose2d)  # weight (in, out, k, k)
            o_dim, i_dim = (1, 0) if transposed else (0, 1)
            rows = new_w.narrow(o_dim, 0, old_w.shape[o_dim])  # the old outputs (a view of new_w)
            rows.zero_()  # zero weights on the new inputs
            i_idx = in_index(name, old_w.shape[i_dim], new_w.shape[i_dim]).to(new_w.device)
            rows.index_copy_(i_dim, i_idx, old_w.to(new_w))
            out[prefix + "weight"] = new_w
            if module.bias is not None:
                bias = fresh[prefix + "bias"].clone()
                bias[: state[prefix + "bias"].shape[0]] = state[prefix + "bias"].to(bias)
                out[prefix + "bias"] = bias
        elif isinstance(module, nn.BatchNorm2d):
            n_old = state[prefix + "weight"].shape[0]
            for key, default in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                t = torch.full_like(fresh[prefix + key], default)
                t[:n_old] = state[prefix + key].to(t)
                out[prefix + key] = t
            out[prefix + "num_batches_tracked"] = state[prefix + "num_batches_tracked"].clone()
    missing = set(fresh) - set(out)
    if missing:  # pragma: no cover - every DRU-Net tensor belongs to a layer handled above
        raise ValueError(f"widening left {sorted(missing)[:3]} unset")
    return out
