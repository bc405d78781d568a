"""Stable-Baselines3 algorithms and their per-algorithm hyperparameter files (rl-zoo style)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import yaml

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"
ALGOS = ("ppo", "ppo-gaussian", "ppo-residual", "a2c", "sac", "td3", "ddpg", "dqn")
#: names that read another algorithm's YAML: ppo-gaussian is ppo (the Gaussian policy over ratios)
ALIASES = {"ppo-gaussian": "ppo"}
#: algorithms whose env is the residual one (moves relative to the static frontier, action masks)
RESIDUAL_ALGOS = ("ppo-residual",)
# keys of the YAML files that are ours, not SB3 constructor arguments
META_KEYS = ("total_timesteps", "normalize_observations", "action_mode", "action_noise_std", "policy",
             "keep_probability")


def algo_class(name: str):
    import stable_baselines3 as sb3

    if name not in ALGOS:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGOS)}")
    if name == "ppo-residual":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    return {"ppo": sb3.PPO, "a2c": sb3.A2C, "sac": sb3.SAC, "td3": sb3.TD3, "ddpg": sb3.DDPG,
            "dqn": sb3.DQN}[ALIASES.get(name, name)]


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``learning_rate=1e-4``, ``policy_kwargs={net_arch: [32]}``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"hyperparameter override {text!r} must look like key=value")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse value of override {text!r}: {e}") from None


def load_hyperparams(algo: str, overrides: list[str] | None = None) -> dict:
    path = HYPERPARAMS_DIR / f"{ALIASES.get(algo, algo)}.yml"
    if algo not in ALGOS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")
    hp = yaml.safe_load(path.read_text())
    for text in overrides or []:
        k, v = parse_override(text)
        hp[k] = v
    if algo == "dqn" and hp.get("action_mode") != "discrete":
        raise ValueError("dqn needs action_mode: discrete (an index into the env's ratio grid)")
    if algo != "dqn" and hp.get("action_mode") == "discrete" and algo in ("sac", "td3", "ddpg"):
        raise ValueError(f"{algo} needs action_mode: continuous")
    return hp


def build_model(algo: str, hp: dict, env, seed: int, tensorboard_log: str | None, device: str = "cpu"):
    cls = algo_class(algo)
    kwargs = {k: copy.deepcopy(v) for k, v in hp.items() if k not in META_KEYS}
    noise_std = hp.get("action_noise_std")
    if noise_std and algo in ("td3", "ddpg"):
        from stable_baselines3.common.noise import NormalActionNoise

        dim = env.action_space.shape[0]
        kwargs["action_noise"] = NormalActionNoise(np.zeros(dim), noise_std * np.ones(dim))
    model = cls(hp.get("policy", "MlpPolicy"), env, seed=seed, tensorboard_log=tensorboard_log, device=device,
                verbose=0, **kwargs)
    if algo in RESIDUAL_ALGOS:
        init_keep_bias(model, float(hp.get("keep_probability", KEEP_PROBABILITY)))
    return model


#: the residual policy's initial probability of "keep" (move 0)
KEEP_PROBABILITY = 0.8


def init_keep_bias(model, keep: float) -> None:
    """Start a discrete residual policy near the frontier without pinning it there: set the action
    net's bias to log(keep) for move 0 and log((1 - keep) / (n - 1)) for each other move, so that
    softmax(bias) = (keep, (1 - keep) / (n - 1), ...) exactly. The logits add the action net's
    weights times the last hidden layer; SB3 initialises those weights orthogonally with gain 0.01,
    so at the start keep's probability is ``keep`` up to a few hundredths (before the masks, which
    renormalise over the allowed moves and so only raise it)."""
    import torch

    if not 0.0 < keep < 1.0:
        raise ValueError(f"keep_probability must be in (0, 1), got {keep!r}")
    bias = model.policy.action_net.bias
    n = bias.shape[0]
    probs = torch.full((n,), (1.0 - keep) / (n - 1), dtype=bias.dtype)
    probs[0] = keep
    with torch.no_grad():
        bias.copy_(torch.log(probs))


def per_env_hyperparams(algo: str, hp: dict, n_envs: int) -> dict:
    """SB3's per-env hyperparameters for ``n_envs`` environments from ours, which count transitions of
    the whole vector env: ``n_steps`` (transitions per rollout, on-policy) is split among the envs, and
    ``train_freq`` (transitions between updates, off-policy) becomes vector steps with ``gradient_steps``
    scaled to keep the gradient steps per transition. So ``--n-envs`` changes how many episodes run
    together, not how much data an update sees."""
    out = dict(hp)
    if n_envs < 1:
        raise ValueError(f"--n-envs must be >= 1, got {n_envs}")
    if n_envs == 1:
        return out
    if "n_steps" in hp:
        n = int(hp["n_steps"])
        if n % n_envs:
            raise ValueError(f"n_steps {n} (transitions per rollout, over all envs) is not a multiple of --n-envs "
                             f"{n_envs}: choose --n-envs dividing it, or --hp n_steps=<multiple of {n_envs}>")
        out["n_steps"] = n // n_envs
    tf = hp.get("train_freq")
    if isinstance(tf, int) and tf > 0:
        per_env = max(1, round(tf / n_envs))
        out["train_freq"] = per_env
        gs = int(hp.get("gradient_steps", 1))
        if gs > 0:
            out["gradient_steps"] = max(1, round(gs * per_env * n_envs / tf))
    return out
