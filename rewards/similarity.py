"""Image similarity vs the unpruned reference: SSIM and PSNR (torchmetrics), LPIPS (the lpips package).

All functions take image batches (B, 3, H, W) in [0, 1] and return one value per image (B,).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

LPIPS_NETS = ("alex", "vgg")
# torchvision's file names for the ImageNet backbones LPIPS uses (looked up in the torch hub cache)
_TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def _check_pair(images: torch.Tensor, reference: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if images.shape[-2:] != reference.shape[-2:] or reference.shape[0] not in (1, images.shape[0]):
        raise ValueError(f"image shape {tuple(images.shape)} does not match reference shape {tuple(reference.shape)}")


def ssim(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (Gaussian window 11, sigma 1.5, data range 1, computed in
    float64); 1 = identical."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(images, reference)
    ref = reference.expand_as(images)
    # float64: in float32 torchmetrics gives SSIM(x, x) = 1 - 4e-5 on flat images, and the reward
    # promises quality terms of exactly 0 (to ~1e-13) when nothing is pruned
    return structural_similarity_index_measure(images.double().clamp(0, 1), ref.double().clamp(0, 1),
                                              data_range=1.0, reduction="none").reshape(-1).float()


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """PSNR per image in dB (data range 1); ``inf`` for identical images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(images, reference)
    ref = reference.expand_as(images)
    return peak_signal_noise_ratio(images.float().clamp(0, 1), ref.float().clamp(0, 1), data_range=1.0,
                                   reduction="none", dim=(1, 2, 3)).reshape(-1)


class LpipsUnavailable(FileNotFoundError):
    """LPIPS needs an ImageNet backbone that is neither given as a path nor in the torch hub cache."""


def _cached_backbone(net: str) -> Path | None:
    hub = Path(os.environ.get("TORCH_HOME", os.path.expanduser("~/.cache/torch"))) / "hub" / "checkpoints"
    f = hub / _TORCHVISION_FILES[net]
    return f if f.is_file() else None


class LpipsMetric:
    """LPIPS distance (lower = more similar; 0 for identical images) through the ``lpips`` package.

    The package ships its linear calibration layers; the ImageNet backbone (torchvision AlexNet or
    VGG16) comes from ``backbone_path`` (a torchvision state dict, loaded with weights_only=True) or
    from torchvision's local cache. Nothing is downloaded: neither available -> ``LpipsUnavailable``.

    Args:
        net: 'alex' or 'vgg'.
        backbone_path: torchvision state dict of the backbone (``alexnet-owt-7be5be79.pth`` /
            ``vgg16-397923af.pth``); None = torchvision's cache.
    """

    def __init__(self, net: str = "alex", backbone_path: str | Path | None = None, device: str = "cpu") -> None:
        if net not in LPIPS_NETS:
            raise ValueError(f"lpips net must be one of {LPIPS_NETS}, got {net!r}")
        path = Path(backbone_path) if backbone_path is not None else _cached_backbone(net)
        if backbone_path is not None and not path.is_file():
            raise LpipsUnavailable(f"LPIPS backbone file {backbone_path} does not exist")
        if path is None:
            raise LpipsUnavailable(
                f"LPIPS ({net}) needs torchvision's ImageNet {net} weights ({_TORCHVISION_FILES[net]}), which are not in "
                f"the torch hub cache, and this tool never downloads at run time. Pass lpips_backbone=/path/to/"
                f"{_TORCHVISION_FILES[net]} (e.g. --lpips-backbone), or use SSIM (the embedded preset).")
        import lpips

        self.net = net
        with warnings.catch_warnings():  # torchvision's deprecation notes about lpips's `pretrained=` argument
            warnings.simplefilter("ignore", UserWarning)
            self.model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()  # random backbone: no download
        state = torch.load(path, map_location="cpu", weights_only=True)
        self._load_backbone(state, path)
        self.model.to(device)
        self.device = torch.device(device)

    def _load_backbone(self, state: dict, path: Path) -> None:
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        if not features:
            raise LpipsUnavailable(f"{path} is not a torchvision {self.net} state dict (no 'features.*' keys)")
        target = self.model.net
        mapped = {}
        for name, _ in target.named_parameters():
            slice_name, idx, param = name.split(".")  # e.g. slice2.3.weight <- features.3.weight
            key = f"{idx}.{param}"
            if key not in features:
                raise LpipsUnavailable(f"{path} lacks features.{key} needed by LPIPS-{self.net}")
            mapped[name] = features[key]
        try:
            target.load_state_dict(mapped, strict=True)
        except RuntimeError as e:
            raise LpipsUnavailable(f"{path} does not fit LPIPS-{self.net}: {e}") from None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        _check_pair(images, reference)
        x = images.float().clamp(0, 1).to(self.device) * 2 - 1
        y = reference.float().clamp(0, 1).to(self.device).expand_as(x) * 2 - 1
        return self.model(x, y).reshape(-1).cpu()
