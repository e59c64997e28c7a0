"""Colorization (Zhang, Isola & Efros, 2016): predict an image's colour from its lightness.

CIE Lab splits a colour into lightness L and two colour-opponent channels a (green-red) and
b (blue-yellow). The network sees only L and predicts ab; to do that well it has to recognise
what it is looking at (sky is blue, grass is green), which is the representation we keep.

    x (N, 3, H, W) RGB in [0, 1]  --split_lab-->  L (N, 1, H, W) in [0, 100], ab (N, 2, H, W)
    h = f(L / 100)                 encoder f: a ConvNet with ONE input channel
    ab_hat = 110 tanh(g(f_map))    decoder g from the encoder's last feature map
    loss = mean (ab_hat / 110 - ab / 110)^2

Choice: plain regression (MSE on ab / 110) rather than the paper's class-rebalanced
classification over 313 quantised ab bins. Regression is simpler to read and to grade; its known
weakness, which the paper's classification fixes, is desaturated (greyish, averaged) colours
where several colours are plausible.

Lab conversion (sRGB, D65 white), for RGB in [0, 1]:
    linear  = rgb / 12.92                     if rgb <= 0.04045
              ((rgb + 0.055) / 1.055)^2.4     otherwise           (undo the sRGB gamma)
    XYZ     = M @ linear                      M: sRGB -> XYZ (IEC 61966-2-1)
    f(t)    = t^(1/3) if t > (6/29)^3 else t / (3 (6/29)^2) + 4/29
    L = 116 f(Y / Yn) - 16,  a = 500 (f(X / Xn) - f(Y / Yn)),  b = 200 (f(Y / Yn) - f(Z / Zn))
    with the D65 white (Xn, Yn, Zn) = (0.95047, 1.0, 1.08883).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.models.decoder import decoder_for, feature_map, resolve_encoder
from sslkit.transfer import to_device
from sslkit.unit_images import step_floats

# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1); rows give X, Y, Z.
RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
WHITE_D65 = (0.95047, 1.0, 1.08883)  # (Xn, Yn, Zn)
DELTA = 6 / 29  # f is a cube root above DELTA^3 and linear below
AB_SCALE = 110.0  # |a|, |b| <= ~110 for sRGB colours: the network predicts ab / AB_SCALE


def _matrix(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    m = torch.tensor(RGB_TO_XYZ, dtype=torch.float64)
    m = torch.linalg.inv(m) if inverse else m
    return m.to(device=x.device, dtype=x.dtype)


def _white(x: torch.Tensor) -> torch.Tensor:
    return to_device(torch.tensor(WHITE_D65, dtype=x.dtype), x.device).view(1, 3, 1, 1)


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """x (N, 3, H, W) sRGB in [0, 1] -> Lab (N, 3, H, W): L in [0, 100], a, b in ~[-110, 110]."""
    linear = torch.where(x <= 0.04045, x / 12.92,
                         ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    # legend: i = XYZ row, j = RGB channel; n, h, w = batch, height, width
    xyz = torch.einsum("ij,njhw->nihw", _matrix(x), linear) / _white(x)  # (N, 3, H, W)
    f = torch.where(xyz > DELTA**3, xyz.clamp(min=DELTA**3) ** (1 / 3),
                    xyz / (3 * DELTA**2) + 4 / 29)
    fx, fy, fz = f.unbind(1)  # each (N, H, W)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """lab (N, 3, H, W) -> sRGB (N, 3, H, W); NOT clamped (out-of-gamut Lab leaves [0, 1])."""
    L, a, b = lab.unbind(1)  # each (N, H, W)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], dim=1)  # (N, 3, H, W)
    xyz = torch.where(f > DELTA, f**3, 3 * DELTA**2 * (f - 4 / 29)) * _white(lab)
    linear = torch.einsum("ij,njhw->nihw", _matrix(lab, inverse=True), xyz)  # (N, 3, H, W)
    return torch.where(linear <= 0.0031308, 12.92 * linear,
                       1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def split_lab(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, 3, H, W) RGB in [0, 1] -> (L (N, 1, H, W) in [0, 100], ab (N, 2, H, W))."""
    lab = rgb_to_lab(x)
    return lab[:, :1], lab[:, 1:]


def merge_lab(L: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """L (N, 1, H, W), ab (N, 2, H, W) -> RGB (N, 3, H, W) clamped to [0, 1]."""
    return lab_to_rgb(torch.cat([L, ab], dim=1)).clamp(0, 1)


def to_float(x: torch.Tensor, who: str) -> torch.Tensor:
    """uint8 in [0, 255] or float in [0, 1] -> float32 in [0, 1]; other dtypes, and on the CPU
    floats outside [0, 1] (a forgotten / 255), are one-line errors naming `who`."""
    return step_floats(x, who)


def check_image_side(encoder: nn.Module, h: int, w: int, who: str) -> None:
    """One-line error unless H and W are positive multiples of 2^(number of encoder blocks): the
    decoder doubles the side once per block, so only then does it give back H x W."""
    factor = 2 ** len(encoder.blocks)
    if h < factor or w < factor or h % factor or w % factor:
        fit = max(factor, round(max(h, w) / factor) * factor)
        raise SSLKitError(f"{who} needs image sides divisible by {factor} (one halving per "
                          f"encoder block), got {h}x{w}: resize the images to e.g. {fit}x{fit}")


class Colorization(nn.Module):
    """Colorization(in_channels=3, arch="convnet-small").

    in_channels: channels of the training images; must be 3 (RGB): grey images have no colour
        to predict. The ENCODER always takes 1 channel (L / 100), so ``.encoder`` runs on grey
        images (N, 1, H, W) in [0, 1] downstream.
    arch: a name from sslkit.models.ARCHS (a ConvNet: "convnet-small", "convnet"), built with one
        input channel, or an encoder module with ``.blocks`` and 1 input channel.
    Image sides must be divisible by 2^(number of blocks) (16 for the ConvNets).
    """

    def __init__(self, in_channels: int = 3, arch: str | nn.Module = "convnet-small"):
        super().__init__()
        if in_channels != 3:
            raise SSLKitError(f"Colorization trains on RGB images (in_channels=3), got "
                              f"in_channels={in_channels}: use colour_patches() as training data")
        self.encoder = resolve_encoder(arch, 1)
        first = next(m for m in self.encoder.modules() if isinstance(m, nn.Conv2d))
        if first.in_channels != 1:
            raise SSLKitError(f"the colorization encoder sees L only: it needs 1 input channel, "
                              f"got an encoder with {first.in_channels}")
        self.decoder = decoder_for(self.encoder, 2)

    def lab(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 3, H, W) uint8 or float RGB -> (L, ab), computed in float32 even under autocast
        (the conversion's matrix product would otherwise run in half precision)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise SSLKitError(f"Colorization needs RGB images (N, 3, H, W), got shape "
                              f"{tuple(x.shape)}: train it on colour_patches()")
        with torch.autocast(x.device.type, enabled=False):
            return split_lab(to_float(x, "Colorization"))

    def predict_ab(self, L: torch.Tensor) -> torch.Tensor:
        """L (N, 1, H, W) in [0, 100] -> predicted ab (N, 2, H, W) in (-110, 110)."""
        check_image_side(self.encoder, *L.shape[2:], "Colorization")
        z = feature_map(self.encoder, L / 100)  # (N, w4, H/16, W/16)
        return AB_SCALE * torch.tanh(self.decoder(z))

    def forward_loss(self, ab_hat: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """MSE between predicted and true ab, both scaled by 1/110; scalar."""
        return F.mse_loss(ab_hat / AB_SCALE, ab / AB_SCALE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) RGB, uint8 or float in [0, 1] -> scalar loss."""
        L, ab = self.lab(x)
        return self.forward_loss(self.predict_ab(L), ab)

    @torch.no_grad()
    def colorize(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) RGB (uint8 or float) -> (N, 3, H, W) in [0, 1]: the true L with the
        predicted ab (in eval mode; the module's mode is restored)."""
        was_training = self.training
        self.eval()
        try:
            L, _ = self.lab(x)
            ab_hat = self.predict_ab(L).float()
            with torch.autocast(x.device.type, enabled=False):
                return merge_lab(L, ab_hat)
        finally:
            self.train(was_training)


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    """scikit-learn's two bundled photos as (3, 427, 640) uint8 tensors (no download)."""
    from sklearn.datasets import load_sample_image

    return tuple(torch.tensor(load_sample_image(name)).permute(2, 0, 1).contiguous()
                 for name in ("china.jpg", "flower.jpg"))


def colour_patches(n: int, size: int = 32, seed: int = 0,
                   scale: tuple[float, float] = (0.1, 0.5)) -> torch.Tensor:
    """n random colour crops of scikit-learn's sample photos -> uint8 (n, 3, size, size).

    Each crop: a random photo, a square of side scale * (the photo's short side) with scale
    uniform in ``scale``, at a uniform position, resized to size x size (bilinear, antialiased),
    mirrored left-right with probability 1/2. Reproducible from seed.
    """
    g = torch.Generator().manual_seed(seed)
    photos = _photos()
    which = torch.randint(len(photos), (n,), generator=g)
    fraction = torch.empty(n).uniform_(*scale, generator=g)
    corner = torch.rand(n, 2, generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        photo = photos[int(which[i])]
        h, w = photo.shape[1:]
        side = max(size, int(fraction[i] * min(h, w)))
        top, left = int(corner[i, 0] * (h - side + 1)), int(corner[i, 1] * (w - side + 1))
        crop = photo[None, :, top:top + side, left:left + side].float()
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]
        crop = crop.flip(-1) if flip[i] else crop
        out[i] = crop.round().clamp(0, 255).to(torch.uint8)
    return out
