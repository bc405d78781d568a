"""Multi-scale residual vector-quantised tokenizer (VAR-style), small enough for a CPU.

Why vector quantisation and not Infinity's bitwise (BSQ) codes: with a 512-entry codebook the
next-scale transformer predicts one categorical distribution per token, whose entropy is a clean,
cheap observation for the pruning agent, and the model stays small. The multi-scale residual
scheme is the part that matters for pruning and it is identical in spirit to VAR/Infinity:

    f_rest = encoder(image);  f_hat = 0
    for each scale k (side p_k):
        idx_k   = nearest_code(area_downsample(f_rest, p_k))
        contrib = phi(bicubic_upsample(codebook[idx_k], latent_size))
        f_hat  += contrib;  f_rest -= contrib
    image ~= decoder(f_hat)

Skipping scale k at generation time simply means contrib_k = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedded.config import TokenizerConfig

DECODE_CHUNK = 50
# bump when decode's arithmetic changes (images differ in their last bits): the generator's fingerprint
# carries it, so reference and static-grid caches made by the old arithmetic are not reused
DECODE_NUMERICS = 2


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(32, channels // 4), num_channels=channels, eps=1e-6)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x_BCHW) + h


class _Encoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(3, chs[0], 3, padding=1)
        layers: list[nn.Module] = []
        c = chs[0]
        for i, c_out in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(_ResBlock(c, c_out))
                c = c_out
            if i < len(chs) - 1:
                layers.append(nn.Conv2d(c, c, 4, stride=2, padding=1))
        layers.append(_ResBlock(c, c))
        self.body = nn.Sequential(*layers)
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, cfg.latent_channels, 3, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(img_B3HW))
        return self.conv_out(F.silu(self.norm_out(h)))


class _Decoder(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mult][::-1]
        c = chs[0]
        self.conv_in = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        layers: list[nn.Module] = [_ResBlock(c, c)]
        for i, c_out in enumerate(chs):
            for _ in range(cfg.num_res_blocks):
                layers.append(_ResBlock(c, c_out))
                c = c_out
            if i < len(chs) - 1:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                layers.append(nn.Conv2d(c, c, 3, padding=1))
        self.body = nn.Sequential(*layers)
        self.norm_out = _group_norm(c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, f_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(f_BCHW))
        return self.conv_out(F.silu(self.norm_out(h)))


class MultiScaleVQTokenizer(nn.Module):
    """Encoder, shared codebook with multi-scale residual quantisation, decoder.

    Images are float tensors in [0, 1], shape (B, 3, H, W). Latents ``f`` are (B, C, h, w) with
    h = w = ``cfg.latent_size``. Token maps at scale k are int64 (B, p_k, p_k) codebook indices.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _Encoder(cfg)
        self.decoder = _Decoder(cfg)
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.latent_channels)
        nn.init.uniform_(self.codebook.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        self.phi = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 3, padding=1)

    # ---- pieces shared by training and generation -------------------------------------------
    def scale_contribution(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Codes of one scale -> their contribution to f_hat at latent resolution, (B, C, h, w)."""
        emb_BChw = self.codebook(idx_Bhw).permute(0, 3, 1, 2)
        return self.embedding_contribution(emb_BChw)

    def embedding_contribution(self, emb_BCpp: torch.Tensor) -> torch.Tensor:
        """Code vectors of one scale (B, C, p, p) -> upsampled, phi-refined contribution."""
        size = self.cfg.latent_size
        if emb_BCpp.shape[-1] != size:
            emb_BCpp = F.interpolate(emb_BCpp, size=(size, size), mode="bicubic", align_corners=False)
        if self.cfg.phi_mix > 0:
            emb_BCpp = (1 - self.cfg.phi_mix) * emb_BCpp + self.cfg.phi_mix * self.phi(emb_BCpp)
        return emb_BCpp

    def decode(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Accumulated codes -> image in [0, 1], (B, 3, H, W).

        On the CPU the latents go in channels-last and at most ``DECODE_CHUNK`` images per decoder call:
        oneDNN's convolutions are 1.35x faster in that layout, and at most 50 images keep the
        activations in cache (decode of 100 images, 2 threads: 1.65x together, measured). Like any
        batched call, an image's last bits depend on the chunk it is decoded in (~2e-6). On a GPU the
        batch goes in whole, as before."""
        x, chunk = f_hat_BChw, f_hat_BChw.shape[0]
        if x.device.type == "cpu":
            x, chunk = x.contiguous(memory_format=torch.channels_last), DECODE_CHUNK
        parts = [self.decoder(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        return (out * 0.5 + 0.5).clamp(0.0, 1.0).contiguous()

    def nearest_codes(self, z_BCpp: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector (L2) for every position, (B, p, p)."""
        B, C, p, _ = z_BCpp.shape
        z_NC = z_BCpp.permute(0, 2, 3, 1).reshape(-1, C)
        w_VC = self.codebook.weight
        d_NV = z_NC.pow(2).sum(1, keepdim=True) - 2 * z_NC @ w_VC.t() + w_VC.pow(2).sum(1)[None]
        return d_NV.argmin(1).view(B, p, p)

    # ---- tokenisation -------------------------------------------------------------------------
    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.encoder(img_B3HW * 2 - 1)

    def quantize(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Multi-scale residual quantisation.

        Returns (f_hat with a straight-through gradient, per-scale index maps, VQ loss).
        """
        f_rest = f_BChw.detach()
        f_hat = torch.zeros_like(f_rest)
        idx_list: list[torch.Tensor] = []
        vq_loss = f_BChw.new_zeros(())
        for p in self.cfg.scales:
            z = F.interpolate(f_rest, size=(p, p), mode="area") if p != self.cfg.latent_size else f_rest
            idx = self.nearest_codes(z)
            idx_list.append(idx)
            emb = self.codebook(idx).permute(0, 3, 1, 2)
            # codebook loss pulls the chosen codes towards the residual they quantise
            vq_loss = vq_loss + F.mse_loss(emb, z.detach())
            contrib = self.embedding_contribution(emb)
            f_hat = f_hat + contrib
            f_rest = f_rest - contrib.detach()
        commit = F.mse_loss(f_BChw, f_hat.detach())
        vq_loss = vq_loss / len(self.cfg.scales) + 0.25 * commit
        # straight-through: decoder gradients reach the encoder; codebook/phi learn through f_hat
        f_hat_st = f_hat + (f_BChw - f_BChw.detach())
        return f_hat_st, idx_list, vq_loss

    @torch.no_grad()
    def encode_indices(self, img_B3HW: torch.Tensor) -> list[torch.Tensor]:
        """Images in [0, 1] -> per-scale code index maps (list of (B, p_k, p_k) int64)."""
        return self.quantize(self.encode_latent(img_B3HW))[1]

    @torch.no_grad()
    def indices_to_f_hat(self, idx_list: list[torch.Tensor | None]) -> torch.Tensor:
        """Sum of scale contributions; ``None`` entries (skipped scales) contribute nothing."""
        present = [i for i in idx_list if i is not None]
        B = present[0].shape[0]
        s = self.cfg.latent_size
        f_hat = self.codebook.weight.new_zeros(B, self.cfg.latent_channels, s, s)
        for idx in present:
            f_hat = f_hat + self.scale_contribution(idx)
        return f_hat

    def teacher_forcing_inputs(self, idx_list: list[torch.Tensor]) -> list[torch.Tensor]:
        """For scales 1..K-1: area-downsampled partial sums f_hat_{<k}, the transformer's inputs.

        Returns a list of (B, C, p_k, p_k) for k = 1..K-1 (scale 0 is fed the text start token).
        """
        inputs: list[torch.Tensor] = []
        f_hat = None
        for k in range(len(self.cfg.scales) - 1):
            contrib = self.scale_contribution(idx_list[k])
            f_hat = contrib if f_hat is None else f_hat + contrib
            inputs.append(next_scale_input(f_hat, self.cfg.scales[k + 1]))
        return inputs

    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training forward: (reconstruction in [-1, 1] scale, vq loss, indices)."""
        f = self.encode_latent(img_B3HW)
        f_hat, idx_list, vq_loss = self.quantize(f)
        return self.decoder(f_hat), vq_loss, idx_list


def next_scale_input(f_hat_BChw: torch.Tensor, side: int) -> torch.Tensor:
    """The accumulated codes seen at the next scale's resolution (area downsampling, as in VAR)."""
    if f_hat_BChw.shape[-1] == side:
        return f_hat_BChw
    return F.interpolate(f_hat_BChw, size=(side, side), mode="area")
