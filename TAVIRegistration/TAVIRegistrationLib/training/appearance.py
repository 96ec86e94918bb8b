"""Appearance randomisation for segmentation training: a frame's vessel mask re-drawn as a new X-ray.

The DRU-Net learns the look of the frames it is trained on. ``restyle_batch`` keeps each sample's
vessel mask and draws a new picture around it, so that the phantom's renderer becomes one look among
many: the background is another frame of the batch with its vessels painted out (real fluoroscopy
when the batch holds real angiograms) or a smooth field; the lumen is laid on it as an absorber,
from faint to dense, with uneven filling; wires, catheters and a delivery capsule are drawn over it
and stay background in the mask; collimator shutters, gamma, edge enhancement, noise and the grey
levels of 6- to 12-bit pictures follow. A share of the restyled frames (``EMPTY_SHARE``) is drawn
without its vessels and with an empty mask: a frame before the injection, whose anatomy, devices and
display the network must leave unmarked. Every draw comes from the CPU generator that the caller
seeds, so a training run repeats.
"""

from __future__ import annotations

import math

#: how many points trace one device curve (wire, catheter, capsule)
DEVICE_POINTS = 96
#: share of the restyled frames drawn without contrast (no lumen, empty mask)
EMPTY_SHARE = 0.2


def gaussian_blur(x, sigma: float):
    """``x`` (B, C, H, W) blurred by a separable Gaussian of ``sigma`` pixels (edges replicated)."""
    import torch
    import torch.nn.functional as F

    r = max(1, int(math.ceil(2.5 * sigma)))
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1)
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k, groups=x.shape[1])
    return F.conv2d(x, k.transpose(2, 3), groups=x.shape[1])


def paint_out_vessels(images, masks, sigma: float = 6.0):
    """The frames with their vessels (``masks`` dilated by 2 px) replaced by the surrounding
    background (normalised convolution: a Gaussian average of the pixels outside the vessels)."""
    import torch.nn.functional as F

    keep = 1.0 - F.max_pool2d(masks, 5, stride=1, padding=2)
    fill = gaussian_blur(images * keep, sigma) / gaussian_blur(keep, sigma).clamp_min(1e-3)
    return images * keep + fill * (1.0 - keep)


def smooth_field(b: int, h: int, w: int, gen, cells: int = 6):
    """(b, 1, h, w) random fields in [0, 1], smooth over about 1/``cells`` of the picture."""
    import torch
    import torch.nn.functional as F

    coarse = torch.rand(b, 1, cells, cells, generator=gen)
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    lo = field.amin(dim=(2, 3), keepdim=True)
    hi = field.amax(dim=(2, 3), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-6)


def device_shadow(b: int, h: int, w: int, gen, max_devices: int = 3):
    """(b, 1, h, w) absorption of random devices (0 where there is none): 0-``max_devices`` curves per
    picture, each a quadratic Bezier with a Gaussian cross-section - a guidewire (1-2 px), a catheter
    (3-6 px) or, one time in five, a short dense capsule (8-16 px)."""
    import torch

    ys = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    xs = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)
    out = torch.zeros(b, 1, h, w)
    t = torch.linspace(0, 1, DEVICE_POINTS).view(-1, 1)
    scale = torch.tensor([w, h], dtype=torch.float32)
    counts = torch.randint(0, max_devices + 1, (b,), generator=gen).tolist()
    for i, n in enumerate(counts):
        for _ in range(n):
            p0, p1, p2 = (torch.rand(2, generator=gen) * 1.4 - 0.2) * scale, torch.rand(2, generator=gen) * scale, \
                (torch.rand(2, generator=gen) * 1.4 - 0.2) * scale
            kind = float(torch.rand(1, generator=gen))
            if kind < 0.2:  # a capsule: a short thick stretch of the curve
                p2 = p0 + (p2 - p0) * 0.15
                p1 = (p0 + p2) / 2
                width, density = 8 + 8 * float(torch.rand(1, generator=gen)), 0.6 + 0.8 * float(torch.rand(1, generator=gen))
            elif kind < 0.6:
                width, density = 3 + 3 * float(torch.rand(1, generator=gen)), 0.2 + 0.5 * float(torch.rand(1, generator=gen))
            else:
                width, density = 1 + float(torch.rand(1, generator=gen)), 0.3 + 0.6 * float(torch.rand(1, generator=gen))
            curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
            d = torch.cdist(pixels, curve).amin(dim=1).view(h, w)
            out[i, 0] = torch.maximum(out[i, 0], density * torch.exp(-0.5 * (d / (width / 2)) ** 2))
    return out


def restyle_batch(images, masks, gen, probability: float = 0.5, empty: float = EMPTY_SHARE):
    """``(images, masks)``: the batch ((B, 1, H, W) in [0, 1], masks 0/1) with each sample, with
    ``probability``, drawn anew around its mask (module docstring); of those, a share ``empty`` is
    drawn without contrast and gets an empty mask, the other masks are unchanged. Draws from ``gen``
    (a CPU generator) whatever the device of the batch."""
    import torch

    b, _, h, w = images.shape
    chosen = torch.nonzero(torch.rand(b, generator=gen) < probability).view(-1)
    if chosen.numel() == 0:
        return images, masks
    dev = images.device
    n = chosen.numel()
    picked = chosen.to(dev)

    def u(lo, hi):
        return (lo + (hi - lo) * torch.rand(n, 1, 1, 1, generator=gen)).to(dev)

    shift = int(torch.randint(1, max(b, 2), (1,), generator=gen))
    donors = ((chosen + shift) % b).to(dev)  # another frame of the batch
    other = paint_out_vessels(images[donors], masks[donors])
    field = smooth_field(n, h, w, gen).to(dev)
    use_field = (torch.rand(n, 1, 1, 1, generator=gen) < 0.3).to(dev)
    background = torch.where(use_field, 0.35 + 0.45 * field, other)
    background = (background - 0.5) * u(0.6, 1.2) + u(0.45, 0.65)  # exposure and window of the other frame

    no_contrast = (torch.rand(n, 1, 1, 1, generator=gen) < empty).to(dev)
    mask = torch.where(no_contrast, torch.zeros_like(masks[picked]), masks[picked])
    # path length through the lumen: largest along a wide vessel's axis, small in thin branches
    depth = gaussian_blur(mask, 4.0)
    depth = depth / depth.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    lumen = gaussian_blur(mask * (0.35 + 0.65 * depth), 0.6 + 0.9 * float(torch.rand(1, generator=gen)))
    filling = 1.0 - u(0.0, 0.7) * smooth_field(n, h, w, gen, cells=4).to(dev)  # uneven filling, wash-out
    density = torch.exp(u(math.log(0.08), math.log(1.5)))  # faint to dense contrast
    absorb = density * lumen * filling + device_shadow(n, h, w, gen).to(dev)
    picture = background.clamp(0.02, 1.0) * torch.exp(-absorb)

    shutters = torch.ones(n, 1, h, w, device=dev)
    for i in range(n):
        if float(torch.rand(1, generator=gen)) < 0.3:
            left, right, top, bottom = (torch.rand(4, generator=gen) * 0.12).tolist()
            shutters[i, :, :, :int(left * w)] = 0
            shutters[i, :, :, w - int(right * w):] = 0
            shutters[i, :, :int(top * h), :] = 0
            shutters[i, :, h - int(bottom * h):, :] = 0
    shutters = gaussian_blur(shutters, 2.0)
    picture = picture * shutters + u(0.85, 1.0) * (1 - shutters)  # the collimator blocks: bright

    picture = picture.clamp(0, 1) ** torch.exp(u(math.log(0.5), math.log(2.0)))
    sharpen = u(0.0, 1.5) * (torch.rand(n, 1, 1, 1, generator=gen) < 0.4).to(dev)
    picture = picture + sharpen * (picture - gaussian_blur(picture, 2.5))
    noise = torch.randn(n, 1, h, w, generator=gen).to(dev)
    picture = picture + u(0.0, 0.05) * picture.clamp_min(0).sqrt() * noise
    levels = 2.0 ** torch.randint(6, 13, (n, 1, 1, 1), generator=gen).to(dev).float()
    out, out_masks = images.clone(), masks.clone()
    out[picked] = torch.round(picture.clamp(0, 1) * (levels - 1)) / (levels - 1)
    out_masks[picked] = mask.to(masks.dtype)
    return out, out_masks
