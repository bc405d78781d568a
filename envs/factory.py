"""Build the objects an environment needs from its config (generator, CLIP, LPIPS, prompts)."""

from __future__ import annotations

from envs.config import EnvConfig

GENERATORS = ("tiny", "infinity")


def make_generator(cfg: EnvConfig):
    from generator.guidance import guidance_from_cfg

    if cfg.generator == "tiny":
        from generator.embedded import load_embedded_generator

        return load_embedded_generator(guidance=guidance_from_cfg(cfg.cfg_scale))
    if cfg.generator == "infinity":
        from generator.infinity_backend import make_infinity_generator

        return make_infinity_generator(**(cfg.infinity or {}))
    raise ValueError(f"unknown generator {cfg.generator!r}; choose one of {GENERATORS}")


def make_clip(cfg: EnvConfig):
    from rewards import ClipScorer

    if cfg.clip_model is None:
        return ClipScorer.embedded()
    return ClipScorer.from_pretrained(cfg.clip_model, cfg.clip_pretrained)


def make_lpips(cfg: EnvConfig):
    from rewards import LpipsMetric

    return LpipsMetric(net=cfg.lpips_net, backbone_path=cfg.lpips_backbone)


def load_prompts_for(split_or_path: str) -> list[str]:
    from generator.domain import load_prompts

    return load_prompts(split_or_path)
