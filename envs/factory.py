"""Build the objects an environment needs from its config (generator, CLIP, LPIPS, prompts)."""

from __future__ import annotations

from envs.config import EnvConfig

from generator.backends import BACKENDS, load_backend

GENERATORS = tuple(BACKENDS)


def make_generator(cfg: EnvConfig):
    """The backend ``cfg.generator`` names, built through the registry in ``generator.backends``."""
    from generator.guidance import guidance_from_cfg

    if cfg.generator == "infinity":
        return load_backend("infinity")(**(cfg.infinity or {}))
    return load_backend(cfg.generator)(guidance=guidance_from_cfg(cfg.cfg_scale), device=cfg.device)


def make_clip(cfg: EnvConfig):
    from rewards import ClipScorer

    if cfg.clip_model is None:
        return ClipScorer.embedded(device=cfg.device)
    return ClipScorer.from_pretrained(cfg.clip_model, cfg.clip_pretrained, device=cfg.device)


def make_lpips(cfg: EnvConfig):
    from rewards import LpipsMetric

    return LpipsMetric(net=cfg.lpips_net, backbone_path=cfg.lpips_backbone)


def load_prompts_for(split_or_path: str) -> list[str]:
    from domain import load_prompts

    return load_prompts(split_or_path)
