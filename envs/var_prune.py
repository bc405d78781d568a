"""VarPrune-v0: choose each late scale's token-pruning ratio while a VAR model makes one image."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.actions import ActionMapper
from envs.config import EnvConfig
from envs.observation import ObservationBuilder
from generator.images import to_uint8


class VarPruneEnv(gym.Env):
    """One episode generates one image; one step decides one scale's pruning ratio.

    ## Description
    A next-scale (VAR-style) generator produces an image as a sequence of token maps, coarse to
    fine. The last scales hold most tokens and compute. Before each controllable scale the agent
    picks a ratio r: ``0 <= r < 1`` runs FastVAR's cached token pruning on a fraction r of that
    scale's tokens, ``r >= 1`` skips the scale. Earlier scales run unpruned automatically.

    ## Action space
    - ``action_mode="continuous"``: ``Box(-1, 1, (1,))`` (``(2,)`` with
      ``allow_drop_unconditional``): ratio = (a[0] + 1) / 2, and a ratio >= ``skip_threshold`` skips
      the scale; a[1] > 0 drops the unconditional CFG branch at this scale.
    - ``action_mode="discrete"``: ``Discrete(len(ratio_grid))`` (doubled with
      ``allow_drop_unconditional``: indices >= len(ratio_grid) also drop the unconditional branch);
      a grid value of 1.0 skips the scale.
    NaN or infinite actions raise ``ValueError``; out-of-range continuous actions are an error too
    (no silent clipping): wrap the env in ``gymnasium.wrappers.ClipAction`` if you want clipping.

    ## Observation space
    ``Box(-inf, inf, (3 + C + 6 + E,), float32)``, C = number of controllable scales,
    E = ``prompt_embedding_dim``, in this order:

    | index | observation |
    |---|---|
    | 0 | progress: (scale index - first controllable) / C, in [0, 1) |
    | 1 | token-map side of the scale about to run / final side |
    | 2 | FLOPs spent so far / FLOPs of the unpruned image |
    | 3 .. 3+C-1 | ratios already chosen for the controllable scales (-1 = not yet) |
    | 3+C | latent-code deviation: log1p of the mean squared deviation of the scale's input codes (the accumulated code map pooled to this scale's tokens) from their mean |
    | 3+C+1 | coefficient of variation of those deviations |
    | 3+C+2 | share of the total deviation held by the top quarter of tokens |
    | 3+C+3 | high-frequency spectral energy fraction of the accumulated codes |
    | 3+C+4 | mean entropy of the last sampled scale's token distributions / its maximum, rounded to 1e-3 |
    | 3+C+5 | log1p of the mean absolute accumulated code value |
    | 3+C+6 .. | fixed random projection of the prompt's CLIP text embedding (E values) |
    | last two | with ``budget_range``: the episode's FLOPs budget b, and b - FLOPs spent so far (fractions) |

    Entries 3+C .. 3+C+5 (``envs.observation.CONTENT_FEATURE_NAMES``) describe the token map about to run.
    The deviation features are computed on latent codes, a proxy of FastVAR's selection score (which
    is measured on the transformer's hidden states at the pruning layer, only once the scale runs). In
    the observation returned with ``terminated=True`` they are 0 (there is no next scale, and no agent
    acts on that observation).

    ## Rewards
    Every step: ``flops_weight * (FLOPs saved at this scale vs the unpruned image) / FLOPs(unpruned
    image)``. After the last scale, the terminal quality terms of ``rewards.RewardFunction``:
    CLIP-score change vs the unpruned image of the same prompt and seed, SSIM / LPIPS vs that image,
    and the FLOPs-budget penalty if ``reward.flops_budget`` (or the episode's budget) is set. Under
    the lossless objective (``reward.objective="iso-quality"``) the terminal reward is instead
    ``-lossless_penalty * max(0, quality loss - epsilon)`` (the CLIP term capped at 0; no budget).
    See ``rewards.reward``.

    ## Budget-conditioned episodes (``budget_range``)
    Each episode has its own FLOPs budget b (observed). Before a controllable scale runs, the budget
    guard (``envs.budget.BudgetGuard``) raises the chosen ratio to the smallest one that keeps the
    image within b, up to skipping the scale; ``info["guarded"]`` counts such projections. With the
    ``embedded_budget`` reward preset the reward is quality alone.

    ## Starting state
    ``reset`` draws a prompt from the prompt split and an image seed from ``range(image_seeds)``
    with ``self.np_random`` (``options={"prompt": ..., "seed": ...}`` overrides either), then runs
    the uncontrolled first scales.

    ## Episode end
    ``terminated`` after the last scale; never truncated. Stepping after the end raises.

    ## Arguments
    ``gymnasium.make("VarPrune-v0", config=EnvConfig(...))`` or keyword overrides of ``EnvConfig``
    fields; ``generator=`` / ``clip=`` / ``reference_cache=`` share already-built objects between
    environments in one process. ``render_mode="rgb_array"`` renders the current decoded image.

    ## Info
    ``flops_used``, ``flops_full``, ``flops_fraction``, ``ratios`` (per scale), ``kept`` (tokens
    forwarded per scale), ``prompt``, ``image_seed``; at the end also every quality term.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    def __init__(self, config: EnvConfig | None = None, render_mode: str | None = None, generator=None,
                 clip=None, lpips=None, reference_cache=None, prompts: list[str] | None = None, **overrides: Any) -> None:
        from rewards import ReferenceCache, RewardFunction
        from envs.factory import load_prompts_for, make_clip, make_generator, make_lpips

        cfg = config or EnvConfig()
        if overrides:
            cfg = EnvConfig.from_dict({**cfg.to_dict(), **overrides})
        self.config = cfg.validate()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.generator = generator if generator is not None else make_generator(cfg)
        self.prompts = list(prompts) if prompts is not None else load_prompts_for(cfg.prompts)
        rc = cfg.reward
        need_clip = rc.clip_weight > 0 or cfg.prompt_embedding_dim > 0
        self.clip = clip if clip is not None else (make_clip(cfg) if need_clip else None)
        self.lpips = lpips if lpips is not None else (make_lpips(cfg) if rc.lpips_weight > 0 else None)
        self.reward_fn = RewardFunction(rc, clip=self.clip, lpips=self.lpips)
        self.references = reference_cache if reference_cache is not None else ReferenceCache(
            max_items=cfg.reference_cache_size, directory=cfg.reference_cache_dir)

        n = self.generator.num_scales
        first = cfg.first_controllable(n)
        if not 0 <= first < n:
            raise ValueError(f"first_controllable_scale must be in 0..{n - 1} for this generator, got {first}")
        self.first_controllable = first
        self.controllable = n - first
        self.flops_full = float(self.generator.flops_full())
        self.flops_unpruned_per_scale = self.generator.schedule_flops([0.0] * n)
        self.observer = ObservationBuilder(self.generator, first, cfg.prompt_embedding_dim, self.clip,
                                           budget_conditioned=cfg.budget_range is not None)
        self.guard = None
        if cfg.budget_range is not None:
            from envs.budget import BudgetGuard, check_budget_range

            self.guard = BudgetGuard(self.generator)
            check_budget_range(cfg.budget_range, self.guard.forced_fraction(first))

        self.actions = ActionMapper(cfg)
        self.action_space = self.actions.space
        self.observation_space = spaces.Box(-np.inf, np.inf, (self.observer.dim,), np.float32)
        self._state = None
        self._done = True
        self._episode = 0
        self._budget: float | None = None
        self._guarded = 0

    # ---- spaces ---------------------------------------------------------------------------------
    @property
    def observation_layout(self) -> dict:
        """What a trained agent must match to be plugged into another generator."""
        return {"num_scales": self.generator.num_scales, "scale_widths": list(self.generator.scale_widths),
                "first_controllable_scale": self.first_controllable, "observation_dim": int(self.observation_space.shape[0]),
                "action_mode": self.config.action_mode, "allow_drop_unconditional": self.config.allow_drop_unconditional,
                "prompt_embedding_dim": self.config.prompt_embedding_dim, "backend": self.generator.backend,
                "budget_range": None if self.config.budget_range is None else list(self.config.budget_range)}

    def action_to_ratio(self, action) -> tuple[float, bool]:
        """Map an action to (ratio, drop_unconditional); validates it (no silent clipping)."""
        return self.actions.to_ratio(action)

    def ratio_to_action(self, ratio: float, drop: bool = False):
        """The action that reproduces a given ratio (used to run fixed schedules through the env)."""
        return self.actions.from_ratio(ratio, drop)

    # ---- gymnasium API ----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        prompt, image_seed = options.get("prompt"), options.get("seed")
        if self.config.prompt_order == "cycle":
            i, self._episode = self._episode, self._episode + 1
            n = len(self.prompts)
            prompt = self.prompts[i % n] if prompt is None else prompt
            image_seed = (i // n) % self.config.image_seeds if image_seed is None else image_seed
        if prompt is None:
            prompt = self.prompts[int(self.np_random.integers(len(self.prompts)))]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"options['prompt'] must be a non-empty string, got {prompt!r}")
        if image_seed is None:
            image_seed = int(self.np_random.integers(self.config.image_seeds))
        self._prompt, self._image_seed = prompt, int(image_seed)
        self._budget = self._draw_budget(options.get("budget"))
        self._guarded = 0
        self._state = self.generator.start([prompt], [self._image_seed])
        for _ in range(self.first_controllable):
            self.generator.step(self._state, 0.0)
        self._ratios = [0.0] * self.generator.num_scales
        self._done = False
        return self._observation(), self._info()

    def step(self, action):
        if self._done or self._state is None:
            raise RuntimeError("episode is over: call reset() before step()")
        ratio, drop = self.action_to_ratio(action)
        k = self._state.scale_index
        if self.guard is not None:
            decision = self.guard.decide(self._state, ratio, drop, self._budget)
            ratio, drop = decision.ratio, decision.drop_unconditional
            self._guarded += int(decision.guarded)
        report = self.generator.step(self._state, ratio, drop_unconditional=drop)
        self._ratios[k] = ratio
        saved = (self.flops_unpruned_per_scale[k] - report.flops) / self.flops_full
        reward = self.reward_fn.step_reward(saved)
        terminated = self._state.finished
        info_extra: dict = {}
        if terminated:
            self._done = True
            terminal, terms, _, _ = self._terminal()
            reward += terminal
            info_extra = dict(terms, terminal_reward=terminal)
        obs = self._observation()
        return obs, float(reward), terminated, False, {**self._info(), **info_extra}

    def render(self):
        if self.render_mode != "rgb_array" or self._state is None:
            return None
        return to_uint8(self.generator.decode(self._state)[0])

    # ---- internals --------------------------------------------------------------------------------
    def _draw_budget(self, budget) -> float | None:
        from envs.budget import episode_budget

        cycle_index = self._episode if self.config.prompt_order == "cycle" else None
        return episode_budget(self.config.budget_range, budget, cycle_index, self.np_random)

    def _terminal(self):
        """The finished image's terminal reward and quality terms against its unpruned reference:
        (terminal, terms, reference image, reference CLIP score)."""
        image = self.generator.decode(self._state)
        ref_image, ref_clip = self._reference(self._prompt, self._image_seed)
        terminal, terms = self.reward_fn.terminal(image, ref_image, self._prompt,
                                                  used_fraction=self._state.flops_used / self.flops_full,
                                                  reference_clip=ref_clip, budget=self._budget)
        return terminal, terms, ref_image, ref_clip

    def _reference(self, prompt: str, seed: int):
        key = (prompt, seed, self.generator.fingerprint())

        def make():
            img, _ = self.generator.generate([prompt], [seed])
            return img

        return self.references.get_or_create(key, make, clip=self.clip if self.config.reward.clip_weight > 0 else None,
                                             prompt=prompt)

    def _observation(self) -> np.ndarray:
        return self.observer.observe(self._state, self._budget)

    def _info(self) -> dict:
        st = self._state
        return {"prompt": self._prompt, "image_seed": self._image_seed, "flops_used": st.flops_used,
                "flops_full": self.flops_full, "flops_fraction": st.flops_used / self.flops_full,
                "ratios": list(self._ratios), "kept": [r.kept for r in st.reports], "scale_index": st.scale_index,
                "drop_unconditional": [not r.unconditional and r.kept > 0 and self.generator.uses_unconditional(r.scale_index)
                                       for r in st.reports],
                "budget": self._budget, "guarded": self._guarded}

