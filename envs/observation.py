"""The agent's observation, built from a generation state (shared by the env and trained agents).

Keeping this outside the env lets a trained agent observe a generation it does not drive through
the env (``agents.AgentSchedule`` inside ``generate.py``) and see exactly what it saw in training.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

N_BASE_FEATURES = 3
N_CONTENT_FEATURES = 6
PROJECTION_SEED = 12345


class ObservationBuilder:
    """Observation vector for the scale a state is about to run (layout: ``VarPruneEnv`` docstring)."""

    def __init__(self, generator, first_controllable: int, prompt_embedding_dim: int, clip=None) -> None:
        self.generator = generator
        self.first_controllable = first_controllable
        self.controllable = generator.num_scales - first_controllable
        self.prompt_embedding_dim = prompt_embedding_dim
        self.clip = clip
        self.flops_full = float(generator.flops_full())
        self._proj = None
        if prompt_embedding_dim > 0:
            if clip is None:
                raise ValueError("prompt_embedding_dim > 0 needs a CLIP scorer for the prompt embedding")
            rng = np.random.default_rng(PROJECTION_SEED)
            dim = clip.embedding_dim
            self._proj = (rng.standard_normal((dim, prompt_embedding_dim)) / math.sqrt(prompt_embedding_dim)).astype(np.float32)
        self._prompt_cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return N_BASE_FEATURES + self.controllable + N_CONTENT_FEATURES + self.prompt_embedding_dim

    def prompt_features(self, prompt: str) -> np.ndarray:
        if self._proj is None:
            return np.zeros(0, np.float32)
        if prompt not in self._prompt_cache:
            emb = self.clip.text_embedding([prompt])[0].detach().cpu().numpy().astype(np.float32)
            self._prompt_cache[prompt] = emb @ self._proj
        return self._prompt_cache[prompt]

    def chosen_ratios(self, state) -> list[float]:
        """Ratios already applied on the controllable scales, read from the state's reports."""
        return [r.ratio for r in state.reports[self.first_controllable:]]

    def content_features(self, state) -> np.ndarray:
        from generator.spectral import high_frequency_energy_batch

        codes = self.generator.accumulated_codes(state)[:1].float()
        k = min(state.scale_index, state.num_scales - 1)
        side = self.generator.scale_sides[k]
        hw = (side, side) if isinstance(side, int) else tuple(side)
        x = F.adaptive_avg_pool2d(codes, hw).flatten(2)[0].t()  # (L, C): the tokens fed at this scale
        dev = (x - x.mean(0, keepdim=True)).pow(2).sum(-1)
        mean = float(dev.mean())
        cv = float(dev.std(unbiased=False) / (dev.mean() + 1e-8)) if dev.numel() > 1 else 0.0
        q = max(1, dev.numel() // 4)
        top = float(dev.topk(q).values.sum() / (dev.sum() + 1e-8))
        hf = float(high_frequency_energy_batch(codes)[0])
        ent = state.last_entropy_B
        ent = 0.0 if ent is None else float(ent[0]) / self.generator.max_entropy
        mag = float(codes.abs().mean())
        return np.asarray([math.log1p(mean), cv, top, hf, ent, math.log1p(mag)], np.float32)

    def observe(self, state) -> np.ndarray:
        n = state.num_scales
        k = min(state.scale_index, n - 1)
        widths = self.generator.scale_widths
        base = [(state.scale_index - self.first_controllable) / self.controllable, widths[k] / widths[-1],
                state.flops_used / self.flops_full]
        prev = [-1.0] * self.controllable
        chosen = self.chosen_ratios(state)
        prev[: len(chosen)] = chosen
        with torch.no_grad():
            content = self.content_features(state)
        return np.concatenate([np.asarray(base + prev, np.float32), content,
                               self.prompt_features(state.prompts[0])]).astype(np.float32)
