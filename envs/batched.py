"""N VarPrune-v0 episodes in lockstep behind one SB3 ``VecEnv``: one generator call per scale for all of
them, references made in batches, rewards computed on the batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from envs.config import EnvConfig
from envs.var_prune import VarPruneEnv
from generator.images import to_uint8
from generator.protocol import image_report


class BatchedVarPruneEnv(VecEnv):
    """``num_envs`` VarPrune-v0 episodes generated as one batch (a Stable-Baselines3 ``VecEnv``).

    Every episode has the same length (one step per controllable scale), so the N episodes run in
    lockstep: ``reset`` starts N images with one ``generator.start`` and runs their uncontrolled first
    scales together; each ``step`` maps the N actions to per-image (ratio, drop-unconditional)
    decisions and makes one ``generator.step(state, ratios, drops)`` call (per-image pruning, skipping
    and CFG dropping, see ``generator.protocol``); after the last scale the N images are decoded and
    rewarded together (SSIM / PSNR / CLIP / LPIPS on the batch, ``RewardFunction.terminal_batch``), the
    missing unpruned references made in batches (``ReferenceCache.get_or_create_many``), and the next
    N episodes start (SB3's auto-reset: ``infos[i]["terminal_observation"]`` holds the last
    observation).

    Each env slot i behaves like one ``VarPruneEnv``: the same observation (per image, exactly what the
    single env observes), action and reward definitions, the same ``info`` keys, and with
    ``seed(s)`` slot i draws its episodes (prompt, then image seed) from the same RNG stream as a
    ``VarPruneEnv`` reset with seed ``s + i`` (as in ``DummyVecEnv``). Differences: the terminal
    quality terms are computed on a batch, which rounds differently (~1e-7) from batch 1; and with
    ``prompt_order="cycle"`` the slots share one cycle (slot i's e-th episode is e * N + i, or
    ``plan_episodes``' offset + e), which, as in ``VarPruneEnv``, goes on across resets (every
    episode started, auto-reset ones included, takes the next index).

    ``generator``, ``clip``, ``lpips``, ``reference_cache``, ``prompts``: shared, already-built objects
    (as for ``VarPruneEnv``). ``reference_batch_size``: most references made in one generator call.
    """

    def __init__(self, config: EnvConfig | None = None, num_envs: int = 16, generator=None, clip=None, lpips=None,
                 reference_cache=None, prompts: list[str] | None = None, reference_batch_size: int = 32,
                 render_mode: str | None = None, **overrides: Any) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if reference_batch_size < 1:
            raise ValueError(f"reference_batch_size must be >= 1, got {reference_batch_size}")
        # one single env holds the shared setup (spaces, observer, reward, references); it never runs
        self.template = self._make_template(config, render_mode=render_mode, generator=generator, clip=clip, lpips=lpips,
                                            reference_cache=reference_cache, prompts=prompts, **overrides)
        t = self.template
        self.config, self.generator, self.prompts, self.clip = t.config, t.generator, t.prompts, t.clip
        self.reward_fn, self.references, self.observer, self.actions = t.reward_fn, t.references, t.observer, t.actions
        self.first_controllable, self.controllable = t.first_controllable, t.controllable
        self.flops_full, self.flops_unpruned_per_scale = t.flops_full, t.flops_unpruned_per_scale
        self.reference_batch_size = reference_batch_size
        self.render_mode = render_mode
        self._rngs: list[np.random.Generator | None] = [None] * num_envs
        self._episode = [0] * num_envs
        self._plan: list[int] | None = None
        self.guard = t.guard
        self.episode_options: dict = {}  # applied to every episode (e.g. {"budget": b} for a fixed-FLOPs evaluation)
        self._state = None
        self._actions = None
        super().__init__(num_envs, t.observation_space, t.action_space)

    def _make_template(self, config, **kwargs) -> VarPruneEnv:
        """The single env whose setup every slot shares (a subclass's own kind of env)."""
        return VarPruneEnv(config, **kwargs)

    # ---- what the single env offers ---------------------------------------------------------------
    @property
    def observation_layout(self) -> dict:
        return self.template.observation_layout

    def ratio_to_action(self, ratio: float, drop: bool = False):
        return self.template.ratio_to_action(ratio, drop)

    def plan_episodes(self, n_episodes: int | None) -> None:
        """With ``prompt_order="cycle"``: give slot i the consecutive episodes that SB3's
        ``evaluate_policy`` counts for it when asked for ``n_episodes`` ((n + i) // N of them), so the
        first evaluation visits episodes 0 .. n - 1 exactly once (and, when N divides n and n is the
        number of prompts, every later one visits every prompt once, rotated). None: slot i's e-th
        episode is e * N + i."""
        if n_episodes is None:
            self._plan = None
            return
        targets = [(n_episodes + i) // self.num_envs for i in range(self.num_envs)]
        self._plan = [sum(targets[:i]) for i in range(self.num_envs)]

    # ---- episodes ---------------------------------------------------------------------------------
    def _draw(self, i: int, options: dict) -> tuple[str, int, float | None]:
        """Slot i's next (prompt, image seed, budget), as ``VarPruneEnv.reset`` draws them."""
        from envs.budget import episode_budget

        cfg = self.config
        options = {**self.episode_options, **options}
        prompt, image_seed = options.get("prompt"), options.get("seed")
        g = None
        if cfg.prompt_order == "cycle":
            e = self._episode[i]
            self._episode[i] += 1
            g = (self._plan[i] + e) if self._plan is not None else e * self.num_envs + i
            n = len(self.prompts)
            prompt = self.prompts[g % n] if prompt is None else prompt
            image_seed = (g // n) % cfg.image_seeds if image_seed is None else image_seed
        rng = self._rngs[i]
        if prompt is None:
            prompt = self.prompts[int(rng.integers(len(self.prompts)))]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"options['prompt'] must be a non-empty string, got {prompt!r}")
        if image_seed is None:
            image_seed = int(rng.integers(cfg.image_seeds))
        # the single env counts its cycle from 1 when it draws the budget (its episode counter has moved on)
        budget = episode_budget(cfg.budget_range, options.get("budget"), None if g is None else g + 1, rng)
        return prompt, int(image_seed), budget

    def _start(self, options: list[dict]) -> np.ndarray:
        drawn = [self._draw(i, options[i]) for i in range(self.num_envs)]
        self._prompts = [p for p, _, _ in drawn]
        self._image_seeds = [s for _, s, _ in drawn]
        self._budgets = [b for _, _, b in drawn]
        self._guarded = [0] * self.num_envs
        self._state = self.generator.start(self._prompts, self._image_seeds)
        for _ in range(self.first_controllable):
            self.generator.step(self._state, 0.0)
        self._ratios = [[0.0] * self.generator.num_scales for _ in range(self.num_envs)]
        self.reset_infos = [self._info(i) for i in range(self.num_envs)]
        return self._observe()

    def _observe(self) -> np.ndarray:
        """(N, dim): every slot's observation of the current state."""
        return self.observer.observe_batch(self._state, self._budgets)

    def reset(self) -> np.ndarray:
        for i, s in enumerate(self._seeds):
            if s is not None or self._rngs[i] is None:
                self._rngs[i], _ = seeding.np_random(s)
        obs = self._start(self._options)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        if self._actions is None or len(self._actions) != self.num_envs:
            raise ValueError(f"need one action per env ({self.num_envs}), got "
                             f"{None if self._actions is None else len(self._actions)}")
        decisions = self._decisions(self._actions)
        self._actions = None
        st = self._state
        ratios, drops = [r for r, _ in decisions], [d for _, d in decisions]
        k = st.scale_index
        report = self.generator.step(st, ratios, drop_unconditional=drops)
        saved_full = self.flops_unpruned_per_scale[k]
        rewards = np.zeros(self.num_envs, np.float32)
        for i in range(self.num_envs):
            self._ratios[i][k] = ratios[i]
            flops = image_report(report, i).flops
            rewards[i] = self.reward_fn.step_reward((saved_full - flops) / self.flops_full)
        if not st.finished:
            infos = [self._info(i) for i in range(self.num_envs)]
            return self._observe(), rewards, np.zeros(self.num_envs, bool), infos
        final_obs = self._observe()
        terminal = self._terminal()
        infos = []
        for i in range(self.num_envs):
            r_term, terms = terminal[i]
            rewards[i] = np.float32(float(rewards[i]) + r_term)
            infos.append({**self._info(i), **terms, "terminal_reward": r_term, "terminal_observation": final_obs[i],
                          "TimeLimit.truncated": False})
        obs = self._start([{}] * self.num_envs)
        return obs, rewards, np.ones(self.num_envs, bool), infos

    def _decisions(self, actions) -> list[tuple[float, bool]]:
        """Every slot's (ratio, drop-unconditional) for the scale about to run, from its action."""
        decisions = [self.actions.to_ratio(a) for a in actions]
        if self.guard is not None:  # each image kept within its own budget (envs.budget)
            guarded = self.guard.decide_batch(self._state, [r for r, _ in decisions], [d for _, d in decisions],
                                              self._budgets)
            for i, gd in enumerate(guarded):
                self._guarded[i] += int(gd.guarded)
            decisions = [(gd.ratio, gd.drop_unconditional) for gd in guarded]
        return decisions

    def _terminal(self) -> list[tuple[float, dict]]:
        images = self.generator.decode(self._state)
        ref_images, ref_clips = self._references()
        used = [f / self.flops_full for f in self._state.flops_used_per_image]
        return self.reward_fn.terminal_batch(images, ref_images.to(images.device), self._prompts, used,
                                             reference_clips=ref_clips, budgets=self._budgets)

    def _references(self) -> tuple[torch.Tensor, list[float] | None]:
        """The batch's unpruned references (made in batches where missing) and their CLIP scores (None
        without a CLIP term)."""
        g = self.generator
        fingerprint = g.fingerprint()
        keys = [(p, s, fingerprint) for p, s in zip(self._prompts, self._image_seeds)]
        use_clip = self.clip if self.config.reward.clip_weight > 0 else None

        def make(indices: list[int]) -> torch.Tensor:
            img, _ = g.generate([self._prompts[i] for i in indices], [self._image_seeds[i] for i in indices])
            return img

        refs = self.references.get_or_create_many(keys, make, clip=use_clip, prompts=self._prompts,
                                                  batch_size=self.reference_batch_size)
        return torch.cat([img for img, _ in refs]), ([c for _, c in refs] if use_clip is not None else None)

    def _info(self, i: int) -> dict:
        st = self._state
        used = st.flops_used_per_image[i]
        reports = st.image_reports(i)
        return {"prompt": self._prompts[i], "image_seed": self._image_seeds[i], "flops_used": used,
                "flops_full": self.flops_full, "flops_fraction": used / self.flops_full, "ratios": list(self._ratios[i]),
                "kept": [r.kept for r in reports], "scale_index": st.scale_index,
                "drop_unconditional": [not r.unconditional and r.kept > 0 and self.generator.uses_unconditional(r.scale_index)
                                       for r in reports],
                "budget": self._budgets[i], "guarded": self._guarded[i]}

    # ---- VecEnv plumbing: one shared object behind every slot ---------------------------------------
    def close(self) -> None:
        self._state = None

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        if self._indices(indices) != list(range(self.num_envs)):
            raise ValueError("the batched env's slots share one set of attributes: set them for all slots (indices=None)")
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        return [getattr(self, method_name)(*method_args, **method_kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self):
        if self.render_mode != "rgb_array" or self._state is None:
            return [None] * self.num_envs
        images = self.generator.decode(self._state)
        return [to_uint8(images[i]) for i in range(self.num_envs)]
