"""rewards/: CLIP score (shipped small CLIP), SSIM/PSNR, LPIPS wiring, the reward formula, the reference cache."""

from __future__ import annotations

import math
import time

import pytest
import torch

from domain import render_prompt
from rewards import (ClipScorer, ClipWeightsUnavailable, LpipsMetric, LpipsUnavailable, ReferenceCache, RewardConfig,
                     RewardFunction, psnr, ssim)

RED = "a large red solid circle in the centre on a plain gray background"
BLUE = "a small blue striped square at the top left on a noisy navy background"


def as_tensor(img_uint8) -> torch.Tensor:
    return torch.from_numpy(img_uint8).permute(2, 0, 1).float().div(255)[None]


@pytest.fixture(scope="module")
def clip():
    return ClipScorer.embedded()


def test_clip_score_prefers_the_true_caption(clip):
    red, blue = as_tensor(render_prompt(RED, 0)), as_tensor(render_prompt(BLUE, 0))
    s = clip.score(torch.cat([red, blue]), [RED, BLUE])
    swapped = clip.score(torch.cat([red, blue]), [BLUE, RED])
    assert (s > swapped).all() and ((0 <= s) & (s <= 100)).all()
    e = clip.text_embedding([RED, BLUE, RED])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3)) and torch.equal(e[0], e[2]) and e.shape[1] == clip.embedding_dim


def test_clip_hub_weights_fail_fast_offline(tmp_path):
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        ClipScorer.from_pretrained("ViT-B-32", "no_such_tag")
    t = time.time()
    with pytest.raises(ClipWeightsUnavailable, match="never downloads"):
        ClipScorer.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")
    assert time.time() - t < 10  # no minute of hub retries
    with pytest.raises(ClipWeightsUnavailable, match="missing.pt"):
        ClipScorer.from_pretrained("ViT-B-32", str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipScorer.from_pretrained("ViT-Nope", "openai")


def test_ssim_and_psnr_from_torchmetrics():
    x = as_tensor(render_prompt(RED, 0))
    g = torch.Generator().manual_seed(0)
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(0, 1) for s in (0.02, 0.1, 0.3)]
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6) and math.isinf(float(psnr(x, x)[0]))
    ss = [float(ssim(n, x)[0]) for n in noisy]
    ps = [float(psnr(n, x)[0]) for n in noisy]
    assert ss == sorted(ss, reverse=True) and ps == sorted(ps, reverse=True)
    assert ps[1] == pytest.approx(20.0, abs=1.0)  # sigma 0.1 noise ~ 20 dB
    with pytest.raises(ValueError, match="does not match"):
        ssim(x, torch.zeros(1, 3, 32, 32))


def test_ssim_equals_torchmetrics():
    """Our separable SSIM is torchmetrics' computation (float64, Gaussian 11 / 1.5, reflect padding)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x = torch.cat([as_tensor(render_prompt(RED, s)) for s in range(3)] + [torch.full((1, 3, 64, 64), 0.3)])
    g = torch.Generator().manual_seed(1)
    y = (x + 0.15 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = structural_similarity_index_measure(y.double(), x.double(), data_range=1.0, reduction="none")
    assert torch.allclose(ssim(y, x).double(), ref.reshape(-1).float().double(), rtol=0, atol=1e-7)
    assert torch.equal(ssim(x, x), torch.ones(4))  # identical images: exactly 1, flat ones included
    assert torch.allclose(ssim(y, x[:1]), ssim(y, x[:1].expand_as(y)), rtol=0, atol=0)  # one reference for all


def test_lpips_wiring_with_a_random_backbone(tmp_path):
    """Wiring only: no ImageNet weights exist offline, so the AlexNet backbone here is randomly
    initialised (torchvision's architecture and state-dict layout, loaded like the real file)."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "alexnet-random.pth"
    torch.save(torchvision.models.alexnet().state_dict(), path)
    m = LpipsMetric("alex", backbone_path=path)
    x = as_tensor(render_prompt(RED, 0))
    y = as_tensor(render_prompt(BLUE, 0))
    assert float(m(x, x)[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(m(y, x)[0]) > float(m((x + 0.02).clamp(0, 1), x)[0]) > 0
    with pytest.raises(LpipsUnavailable, match="nope.pth"):
        LpipsMetric("alex", backbone_path=tmp_path / "nope.pth")
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(LpipsUnavailable, match="bad.pth"):
        LpipsMetric("alex", backbone_path=tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="alex"):
        LpipsMetric("squeeze", backbone_path=path)


def test_reward_formula_and_budget(clip):
    cfg = RewardConfig(flops_weight=1.0, clip_weight=0.05, ssim_weight=2.0, psnr_weight=0.5, flops_budget=0.3,
                       budget_penalty=4.0)
    rf = RewardFunction(cfg, clip=clip)
    ref = as_tensor(render_prompt(RED, 0))
    img = (ref + 0.1 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    r, t = rf.terminal(img, ref, RED, used_fraction=0.4)
    expected = (0.05 * (t["clip_score"] - t["clip_reference"]) - 2.0 * (1 - t["ssim"])
                - 0.5 * (1 - min(t["psnr"], 40.0) / 40.0) - 4.0 * (0.4 - 0.3))
    assert r == pytest.approx(expected, rel=1e-9) and t["budget_excess"] == pytest.approx(0.1)
    r0, t0 = rf.terminal(ref, ref, RED, used_fraction=0.2)
    assert r0 == pytest.approx(0.0, abs=1e-6) and t0["quality_reward"] == pytest.approx(0.0, abs=1e-6)
    assert rf.step_reward(0.25) == 0.25


def test_quality_formula_on_hand_numbers_floats_and_arrays():
    """RewardConfig.quality, the one place the quality terms are written, on numbers worked out by hand:
    SSIM 0.8, PSNR 20 dB (cap 30), CLIP +2 points, LPIPS 0.1 with weights 2, 0.5, 0.05, 0.3:
    -2 * 0.2 - 0.5 * (1 - 20/30) + 0.05 * 2 - 0.3 * 0.1 = -0.4 - 1/6 + 0.1 - 0.03."""
    import numpy as np

    cfg = RewardConfig(ssim_weight=2.0, psnr_weight=0.5, clip_weight=0.05, lpips_weight=0.3, psnr_cap_db=30.0)
    q = cfg.quality(0.8, 20.0, clip_delta=2.0, lpips=0.1)
    assert isinstance(q, float) and q == pytest.approx(-0.4 - 1 / 6 + 0.1 - 0.03, rel=1e-12)
    assert cfg.quality(1.0, math.inf, clip_delta=0.0, lpips=0.0) == 0.0  # identical images: exactly 0
    assert cfg.quality(1.0, 45.0) == 0.0  # PSNR above the cap counts as perfect; no CLIP / LPIPS term given
    assert cfg.quality(0.8, 20.0) == pytest.approx(-0.4 - 1 / 6, rel=1e-12)  # terms given as None are left out
    s, p, d, lp = [0.8, 1.0, 0.3], [20.0, math.inf, 12.0], [2.0, 0.0, -5.0], [0.1, 0.0, 0.6]
    arr = cfg.quality(np.asarray(s), np.asarray(p), clip_delta=np.asarray(d), lpips=np.asarray(lp))
    assert arr.dtype == np.float64 and arr.shape == (3,)
    assert arr.tolist() == [cfg.quality(*x) for x in zip(s, p, d, lp)]  # arrays and floats: the same arithmetic


def test_terminal_quality_is_the_formula_of_its_terms_and_the_batch_agrees(clip):
    """terminal and terminal_batch report the terms they measured and a quality_reward that is
    RewardConfig.quality of them; the batch's terms equal one-image terminal's at float32 tolerance
    (another batch shape: ~1e-7 rounding)."""
    cfg = RewardConfig(flops_weight=1.0, clip_weight=0.05, ssim_weight=2.0, psnr_weight=0.5, flops_budget=0.3)
    rf = RewardFunction(cfg, clip=clip)
    refs = torch.cat([as_tensor(render_prompt(RED, 0)), as_tensor(render_prompt(BLUE, 1))])
    imgs = (refs + 0.1 * torch.randn(refs.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    batch = rf.terminal_batch(imgs, refs, [RED, BLUE], [0.4, 0.2], budgets=[None, 0.1])
    for b, (prompt, used, budget) in enumerate(((RED, 0.4, None), (BLUE, 0.2, 0.1))):
        r, t = rf.terminal(imgs[b:b + 1], refs[b:b + 1], prompt, used_fraction=used, budget=budget)
        assert t["quality_reward"] == cfg.quality(t["ssim"], t["psnr"], clip_delta=t["clip_delta"])
        assert r == t["quality_reward"] - 5.0 * (used - (0.3 if budget is None else budget))
        rb, tb = batch[b]
        assert tb["quality_reward"] == cfg.quality(tb["ssim"], tb["psnr"], clip_delta=tb["clip_delta"])
        for key in ("ssim", "psnr", "clip_delta", "quality_reward"):
            assert tb[key] == pytest.approx(t[key], rel=1e-5, abs=1e-6), key
        assert rb == pytest.approx(r, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("bad, match", [({"ssim_weight": -1.0}, "ssim_weight"), ({"clip_weight": float("nan")}, "clip_weight"),
                                        ({"flops_budget": 1.5}, "flops_budget"), ({"flops_budget": 0.0}, "flops_budget")])
def test_reward_config_rejects_bad_values(bad, match):
    with pytest.raises(ValueError, match=match):
        RewardConfig(**bad).validate()


def test_reward_needs_its_scorers():
    with pytest.raises(ValueError, match="CLIP"):
        RewardFunction(RewardConfig(clip_weight=1.0))
    with pytest.raises(ValueError, match="LPIPS"):
        RewardFunction(RewardConfig(lpips_weight=1.0))


def test_reference_cache_generates_once_evicts_and_persists(tmp_path, clip):
    calls = []

    def make(seed):
        def f():
            calls.append(seed)
            return as_tensor(render_prompt(RED, seed))
        return f

    cache = ReferenceCache(max_items=2, directory=tmp_path)
    a, sa = cache.get_or_create(("p", 0), make(0), clip=clip, prompt=RED)
    b, _ = cache.get_or_create(("p", 0), make(0), clip=clip, prompt=RED)
    assert torch.equal(a, b) and calls == [0] and sa == pytest.approx(float(clip.score(a, [RED])[0]))
    cache.get_or_create(("p", 1), make(1))
    cache.get_or_create(("p", 2), make(2))
    assert len(cache) == 2 and calls == [0, 1, 2]
    fresh = ReferenceCache(max_items=2, directory=tmp_path)  # a new process: served from disk, not regenerated
    c, sc = fresh.get_or_create(("p", 0), make(0), clip=clip, prompt=RED)
    assert torch.equal(c, a) and sc == sa and calls == [0, 1, 2]
    for f in tmp_path.glob("*.safetensors"):
        f.write_bytes(b"damaged")
    d, _ = ReferenceCache(directory=tmp_path).get_or_create(("p", 0), make(0))
    assert torch.equal(d, a) and calls == [0, 1, 2, 0]  # a damaged entry is regenerated, never trusted


@pytest.mark.parametrize("budget_range", [None, (0.25, 0.6)])
def test_scoreboard_reward_column_is_the_envs_episode_reward(budget_range):
    """The scoreboard's "reward (run's)" column (``evaluation.scoreboard.reward_of``) is the episode reward the
    env pays: on an env episode with every term non-zero (FLOPs bonus, SSIM term, a budget exceeded), the
    terminal reward is exactly ``RewardConfig.close`` of its quality and FLOPs (the same code), and
    ``reward_of`` of the episode's quality, FLOPs fraction and budget equals the sum of the env's step and
    terminal rewards (the step rewards summed scale by scale: equal up to float rounding). A fixed budget
    and a budget-conditioned episode (its budget passed as the episode's; the budget guard switched off so
    that the episode exceeds it)."""
    import numpy as np

    from envs.config import EnvConfig
    from envs.var_prune import VarPruneEnv
    from evaluation.scoreboard import reward_of

    cfg = RewardConfig(flops_weight=0.7, ssim_weight=1.5, flops_budget=None if budget_range else 0.3, budget_penalty=4.0)
    env = VarPruneEnv(EnvConfig(budget_range=budget_range, prompt_embedding_dim=0, reward=cfg))
    env.guard = None  # the guard would keep the episode within its budget: the penalty is for what it does not cover
    budget = 0.25 if budget_range else None
    env.reset(seed=0, options={"prompt": RED, "seed": 1, **({"budget": budget} if budget_range else {})})
    total, done, k = 0.0, False, 0
    while not done:  # prune a little on every controllable scale: FLOPs saved, quality lost, the budget exceeded
        ratio = 0.25 if k < 3 else 0.5
        _, reward, done, _, info = env.step(env.ratio_to_action(ratio))
        total += reward
        k += 1
    u, q = info["flops_fraction"], info["quality_reward"]
    assert 1.0 - u > 0.01 and q < -1e-3 and info["budget_excess"] > 0.01, info  # every term is non-zero
    assert info["terminal_reward"] == cfg.close(q, u, budget)
    assert info["terminal_reward"] == q - 4.0 * (u - (budget or 0.3))
    assert reward_of(cfg, q, u, budget) == pytest.approx(total, rel=0, abs=1e-12)
    assert reward_of(cfg, q, u, budget) == cfg.episode_reward(q, u, budget)
    assert reward_of(cfg, q, u, budget) == pytest.approx(0.7 * (1 - u) + q - 4.0 * (u - (budget or 0.3)), abs=1e-12)
    assert np.isfinite(total)
