"""Configuration of the VarPrune environment (a dataclass, so runs can save and reload it)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from rewards.reward import RewardConfig

ACTION_MODES = ("continuous", "discrete")


def check_device(name: str) -> str:
    """``name`` if it is a torch device this machine has, else a ValueError naming it and what is allowed."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {name!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: only 'cpu' and 'cuda[:N]' are supported")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return name


@dataclass
class EnvConfig:
    """Everything that defines an episode, the action and observation spaces, and the reward.

    prompts: a split name ('train' | 'val' | 'test', files in prompts/) or a path to a prompts file.
    prompt_order: 'random' (drawn with the env's np_random) or 'cycle' (episode i uses prompt i mod P
        and image seed (i // P) mod image_seeds: a fixed evaluation set).
    image_seeds: each episode's image seed is drawn from range(image_seeds) (a small pool keeps the
        unpruned references cacheable); ``reset(options={"seed": s})`` overrides it.
    first_controllable_scale: index of the first scale the agent controls; earlier scales run
        unpruned. None = the last ``num_controllable`` scales (default 4: the scales FastVAR touches).
    action_mode: 'continuous' (Box(-1, 1); ratio = (a + 1) / 2, and ratio >= skip_threshold skips
        the scale) or 'discrete' (index into ratio_grid; 1.0 in the grid means skip).
    allow_drop_unconditional: adds an action component that drops the CFG unconditional branch at
        this scale (continuous: second entry > 0; discrete: the grid doubles, upper half drops).
    clip_model, clip_pretrained: an open_clip model name and a local checkpoint path or cached
        tag for the CLIP reward and prompt features; None = the shipped small CLIP.
    lpips_net, lpips_backbone: LPIPS network ('alex' | 'vgg') and a local backbone weights path.
    cfg_scale: classifier-free guidance of the generator. prompt_embedding_dim: size of the fixed
        random projection of the prompt's CLIP text embedding in the observation.
    budget_range: (low, high) fractions of the unpruned transformer FLOPs, or None. When set, the
        agent is budget-conditioned: each episode draws its budget from this range (uniformly with
        ``np_random``; 'cycle' order uses a deterministic low-discrepancy sequence;
        ``reset(options={"budget": b})`` overrides), the budget and the budget left are observed, the
        budget guard (envs/budget.py) keeps every image within it, and the reward's budget term uses it.
    device: torch device of the embedded generator and CLIP ('cpu', 'cuda', 'cuda:1'). A CUDA generator
        samples with CUDA's random streams, so its images differ from the CPU's for the same seed (its
        fingerprint says so, which keeps reference caches apart). The Infinity backend takes its device
        from ``infinity`` (its options).
    """

    generator: str = "tiny"
    prompts: str = "train"
    image_seeds: int = 2
    prompt_order: str = "random"
    first_controllable_scale: int | None = None
    num_controllable: int = 4
    action_mode: str = "continuous"
    skip_threshold: float = 0.9
    ratio_grid: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)
    allow_drop_unconditional: bool = False
    cfg_scale: float = 3.0
    prompt_embedding_dim: int = 16
    reward: RewardConfig = field(default_factory=RewardConfig.embedded)
    clip_model: str | None = None
    clip_pretrained: str | None = None
    lpips_net: str = "alex"
    lpips_backbone: str | None = None
    reference_cache_size: int = 8192
    reference_cache_dir: str | None = None
    infinity: dict | None = None
    budget_range: tuple[float, float] | None = None
    device: str = "cpu"

    def validate(self) -> "EnvConfig":
        if self.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {self.action_mode!r}")
        if not (0.0 < self.skip_threshold <= 1.0):
            raise ValueError(f"skip_threshold must be in (0, 1], got {self.skip_threshold}")
        if not self.ratio_grid or any(not (math.isfinite(r) and 0 <= r <= 1) for r in self.ratio_grid):
            raise ValueError(f"ratio_grid must be non-empty numbers in [0, 1] (1 = skip), got {self.ratio_grid}")
        if self.prompt_order not in ("random", "cycle"):
            raise ValueError(f"prompt_order must be 'random' or 'cycle', got {self.prompt_order!r}")
        if self.image_seeds < 1:
            raise ValueError(f"image_seeds must be >= 1, got {self.image_seeds}")
        if self.num_controllable < 1:
            raise ValueError(f"num_controllable must be >= 1, got {self.num_controllable}")
        if self.prompt_embedding_dim < 0:
            raise ValueError(f"prompt_embedding_dim must be >= 0, got {self.prompt_embedding_dim}")
        if self.budget_range is not None:
            from envs.budget import check_budget_range

            self.budget_range = check_budget_range(self.budget_range, 0.0)
        check_device(self.device)
        self.reward.validate()
        if self.reward.objective == "iso-quality" and self.budget_range is not None:
            raise ValueError(f"the iso-quality objective minimises FLOPs itself: it takes no budget range, got "
                             f"{list(self.budget_range)}")
        return self

    def first_controllable(self, num_scales: int) -> int:
        """The first scale the agent controls on a generator of ``num_scales`` scales:
        ``first_controllable_scale``, or the last ``num_controllable`` scales when it is None."""
        if self.first_controllable_scale is None:
            return max(0, num_scales - self.num_controllable)
        return self.first_controllable_scale

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ratio_grid"] = list(self.ratio_grid)
        if self.budget_range is not None:
            d["budget_range"] = list(self.budget_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EnvConfig":
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown env config keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        if "reward" in d and isinstance(d["reward"], dict):
            d["reward"] = RewardConfig(**d["reward"])
        if "ratio_grid" in d:
            d["ratio_grid"] = tuple(d["ratio_grid"])
        if d.get("budget_range") is not None:
            d["budget_range"] = tuple(d["budget_range"])
        return cls(**d)
