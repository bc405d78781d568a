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
#: the content features, in observation order. "code deviation" is measured on the *latent codes*: the
#: accumulated code map average-pooled to the token map about to run (the input that scale is
#: conditioned on). FastVAR's selection score is the same kind of deviation measured on the
#: transformer's hidden states (residual stream) at the pruning layer, which only exist once the scale
#: runs, after the agent has decided; these features are a cheap proxy of it, not the score itself.
CONTENT_FEATURE_NAMES = ("log1p_code_deviation_mean", "code_deviation_cv", "code_deviation_top_quarter_share",
                         "code_high_frequency_energy", "last_scale_entropy_fraction", "log1p_code_magnitude")
N_CONTENT_FEATURES = len(CONTENT_FEATURE_NAMES)
N_BUDGET_FEATURES = 2
PROJECTION_SEED = 12345


class ObservationBuilder:
    """Observation vector for the scale a state is about to run (layout: ``VarPruneEnv`` docstring)."""

    def __init__(self, generator, first_controllable: int, prompt_embedding_dim: int, clip=None,
                 budget_conditioned: bool = False) -> None:
        self.generator = generator
        self.budget_conditioned = budget_conditioned
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
        self._pools: dict = {}

    @property
    def dim(self) -> int:
        return (N_BASE_FEATURES + self.controllable + N_CONTENT_FEATURES + self.prompt_embedding_dim
                + (N_BUDGET_FEATURES if self.budget_conditioned else 0))

    def budget_features(self, flops_used: float, budget: float | None) -> np.ndarray:
        """[budget, budget left] as fractions of the unpruned FLOPs, for an image that has spent
        ``flops_used`` (empty unless budget-conditioned)."""
        if not self.budget_conditioned:
            return np.zeros(0, np.float32)
        if budget is None:
            raise ValueError("this observation is budget-conditioned: pass the episode's FLOPs budget")
        return np.asarray([budget, budget - flops_used / self.flops_full], np.float32)

    def prompt_features(self, prompt: str) -> np.ndarray:
        if self._proj is None:
            return np.zeros(0, np.float32)
        if prompt not in self._prompt_cache:
            emb = self.clip.text_embedding([prompt])[0].detach().cpu().numpy().astype(np.float32)
            self._prompt_cache[prompt] = emb @ self._proj
        return self._prompt_cache[prompt]

    def chosen_ratios(self, state, b: int = 0) -> list[float]:
        """Ratios image b already applied on the controllable scales, read from the state's reports."""
        return [r.ratio for r in state.image_reports(b)[self.first_controllable:]]

    def _pool_matrix(self, side_hw: tuple[int, int], map_hw: tuple[int, int]) -> np.ndarray:
        """(L, h*w) matrix equal to adaptive average pooling of an (h, w) map to ``side_hw`` (cached)."""
        key = (side_hw, map_hw)
        if key not in self._pools:
            n = map_hw[0] * map_hw[1]
            eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *map_hw)
            self._pools[key] = F.adaptive_avg_pool2d(eye, side_hw).reshape(n, -1).t().numpy()
        return self._pools[key]

    def content_features(self, state, codes_BChw: np.ndarray | None = None, b: int = 0) -> np.ndarray:
        """``CONTENT_FEATURE_NAMES`` of image b for the token map about to run: deviation statistics of the
        latent codes pooled to that map (not FastVAR's hidden-state score, see the constant), spectral energy
        of the accumulated codes, the last scale's sampling entropy, the code magnitude (NumPy: tiny maps).
        ``codes_BChw``: the accumulated codes as float64 NumPy (read from the state if None)."""
        from generator.spectral import high_frequency_energy_batch

        if codes_BChw is None:
            codes_BChw = self.generator.accumulated_codes(state).detach().cpu().numpy().astype(np.float64)
        codes = codes_BChw[b:b + 1]  # (1, C, h, w)
        k = min(state.scale_index, state.num_scales - 1)
        side = self.generator.scale_sides[k]
        hw = (side, side) if isinstance(side, int) else tuple(side)
        c, h, w = codes.shape[1:]
        x = self._pool_matrix(hw, (h, w)) @ codes[0].reshape(c, h * w).T  # (L, C): the tokens fed at this scale
        # <= 64 tokens: plain Python on a list beats a dozen tiny NumPy calls (this runs every env step)
        dev = ((x - x.mean(0, keepdims=True)) ** 2).sum(-1).tolist()
        n_tok = len(dev)
        total = sum(dev)
        mean = total / n_tok
        cv = math.sqrt(sum((d - mean) ** 2 for d in dev) / n_tok) / (mean + 1e-8) if n_tok > 1 else 0.0
        top = sum(sorted(dev)[-max(1, n_tok // 4):]) / (total + 1e-8)
        hf = float(high_frequency_energy_batch(codes)[0])
        ent = state.last_entropy_B
        ent = float("nan") if ent is None else float(ent[b])
        # rounded to 1e-3: the logits it comes from carry ~1e-7 of floating-point noise that depends on the
        # batch an image is generated in; rounded, an image's observation (and so an agent's decision) is
        # the same in any batch. NaN: no scale sampled yet.
        ent = 0.0 if ent != ent else round(ent / self.generator.max_entropy, 3)
        mag = float(np.abs(codes).mean())
        return np.asarray([math.log1p(mean), cv, top, hf, ent, math.log1p(mag)], np.float32)

    def observe_batch(self, state, budgets=None) -> np.ndarray:
        """(B, dim): one observation per image of the state's batch, each exactly what that image would be
        observed as if it were generated alone (its own codes, FLOPs, ratios, prompt and, for
        budget-conditioned observations, its budget: ``budgets`` is one per image or one for all)."""
        n = state.num_scales
        k = min(state.scale_index, n - 1)
        widths = self.generator.scale_widths
        flops = state.flops_used_per_image
        if budgets is None or isinstance(budgets, (int, float)):
            budgets = [budgets] * state.batch
        if len(budgets) != state.batch:
            raise ValueError(f"got {len(budgets)} budgets for a batch of {state.batch} images")
        codes = None if state.finished else self.generator.accumulated_codes(state).detach().cpu().numpy().astype(np.float64)
        rows = []
        for b in range(state.batch):
            base = [(state.scale_index - self.first_controllable) / self.controllable, widths[k] / widths[-1],
                    flops[b] / self.flops_full]
            prev = [-1.0] * self.controllable
            chosen = self.chosen_ratios(state, b)
            prev[: len(chosen)] = chosen
            # after the last scale there is no next token map to describe, and no agent acts on this observation
            content = np.zeros(N_CONTENT_FEATURES, np.float32) if state.finished else self.content_features(state, codes, b)
            rows.append(np.concatenate([np.asarray(base + prev, np.float32), content, self.prompt_features(state.prompts[b]),
                                        self.budget_features(flops[b], budgets[b])]).astype(np.float32))
        return np.stack(rows)

    def observe(self, state, budget: float | None = None) -> np.ndarray:
        """(dim,): the observation of a one-image state (``observe_batch`` for a batch)."""
        if state.batch != 1:
            raise ValueError(f"observe() describes one image but the state holds {state.batch}: use observe_batch(state)")
        return self.observe_batch(state, [budget])[0]
