"""Inpainting with a context encoder (Pathak et al., 2016): hide a square block of each image and
train an encoder-decoder to paint it back from the surrounding context.

    x (N, C, H, W) in [0, 1]
    M = random_block_mask(N, (H, W), block)      (N, 1, H, W), 1 = masked (one block per image)
    masked input   (1 - M) * x                   the hidden block is set to 0
    recon = sigmoid(g(f_map((1 - M) * x)))       (N, C, H, W), encoder f (ConvNet), decoder g
    loss = ||M * (x - recon)||^2 / (number of masked pixels * C)

Choices: the block sits at a random position per image (the paper's "random block" variant; its
"central region" variant always hides the middle); the hidden block is filled with 0; only the
reconstruction (L2) term is used: the paper's adversarial term, which sharpens the painted
pixels but matters little for the learnt features, is left out.

The named stages (``mask_batch``, ``forward_encoder``, ``forward_decoder``, ``forward_loss``)
are the notebook's exercise boundaries; ``forward(x)`` chains them for the training loop.
"""

from __future__ import annotations

import torch
from torch import nn

from sslkit.errors import SSLKitError
from sslkit.methods.colorization import check_image_side, to_float
from sslkit.models.decoder import decoder_for, feature_map, resolve_encoder
from sslkit.transfer import to_device


def random_block_mask(n: int, size: int | tuple[int, int], block: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """A block x block square of ones at a uniform random position inside each image.

    n: number of masks; size: H (square images) or (H, W); block: the square's side.
    Returns (n, 1, H, W) float32 with 1 = masked, 0 = visible; every mask has exactly block^2
    ones. generator: a CPU torch.Generator for reproducible masks.
    """
    h, w = (size, size) if isinstance(size, int) else size
    if not 0 < block <= min(h, w):
        raise SSLKitError(f"the inpainting block must be 1 to {min(h, w)} pixels wide for "
                          f"{h}x{w} images, got {block}: use e.g. block={min(h, w) // 2}")
    top = torch.randint(h - block + 1, (n, 1), generator=generator)  # (n, 1)
    left = torch.randint(w - block + 1, (n, 1), generator=generator)  # (n, 1)
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= top) & (rows < top + block)  # (n, H)
    in_cols = (cols >= left) & (cols < left + block)  # (n, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).float()[:, None]  # (n, 1, H, W)


def masked_reconstruction_loss(x: torch.Tensor, recon: torch.Tensor,
                               mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only.

    x, recon: (N, C, H, W); mask: (N, 1, H, W) (or (N, C, H, W)), 1 = masked.
        loss = sum (M * (x - recon))^2 / (sum of M over pixels * C)
    i.e. the mean of the squared differences over the masked elements, every channel counted.
    Pixels outside the mask do not count. A mask with no ones gives 0.
    """
    m = mask.to(x.dtype).expand_as(x)  # (N, C, H, W)
    return (m * (x - recon)).pow(2).sum() / m.sum().clamp(min=1)


class Inpainting(nn.Module):
    """Inpainting(in_channels, arch="convnet-small", block=None, generator=None).

    in_channels: image channels (1 for the digits, 3 for colour images); the encoder takes them.
    arch: a name from sslkit.models.ARCHS (a ConvNet) or an encoder module with ``.blocks``.
    block: side of the hidden square; None = half the image side (a quarter of the image, as
        the paper's central region).
    generator: a torch.Generator for the masks (None: torch's global generator).
    Image sides must be divisible by 2^(number of blocks) (16 for the ConvNets).
    """

    def __init__(self, in_channels: int = 3, arch: str | nn.Module = "convnet-small",
                 block: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.encoder = resolve_encoder(arch, in_channels)
        self.decoder = decoder_for(self.encoder, in_channels)
        self.block = block
        self.generator = generator
        self.in_channels = in_channels  # what the decoder gives back, so what x must have

    def check_images(self, x: torch.Tensor) -> None:
        """One-line error unless x is (N, in_channels, H, W) with sides the decoder gives back."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise SSLKitError(f"Inpainting was built for images (N, {self.in_channels}, H, W), got "
                              f"shape {tuple(x.shape)}: build it with the images' in_channels")
        check_image_side(self.encoder, *x.shape[2:], "Inpainting")

    def mask_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) -> (masked input (1 - M) * x, M (N, 1, H, W))."""
        self.check_images(x)
        n, _, h, w = x.shape
        block = self.block if self.block is not None else min(h, w) // 2
        mask = to_device(random_block_mask(n, (h, w), block, self.generator), x.device)
        return (1 - mask) * x, mask

    def forward_encoder(self, masked: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the encoder's last feature map (N, w4, H/16, W/16)."""
        return feature_map(self.encoder, masked)

    def forward_decoder(self, z: torch.Tensor) -> torch.Tensor:
        """(N, w4, H/16, W/16) -> recon (N, C, H, W) in (0, 1)."""
        return torch.sigmoid(self.decoder(z))

    def forward_loss(self, x: torch.Tensor, recon: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
        return masked_reconstruction_loss(x, recon, mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W), uint8 or float in [0, 1] -> scalar loss."""
        x = to_float(x, "Inpainting")
        masked, mask = self.mask_batch(x)
        recon = self.forward_decoder(self.forward_encoder(masked))
        return self.forward_loss(x, recon, mask)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C, H, W) -> (masked input, recon, mask), in eval mode (the mode is restored).
        recon is the network's whole output; paste it into the hole with
        masked + mask * recon."""
        was_training = self.training
        self.eval()
        try:
            x = to_float(x, "Inpainting")
            masked, mask = self.mask_batch(x)
            return masked, self.forward_decoder(self.forward_encoder(masked)), mask
        finally:
            self.train(was_training)
