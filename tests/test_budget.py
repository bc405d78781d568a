"""Budget-conditioned episodes: the budget in the observation, the guard, the constraint term, and
budget-conditioned runs in generate.py (embedded default, shipped weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import generate
import train
from envs.budget import BudgetGuard, check_budget, check_budget_range
from envs.config import EnvConfig
from envs.var_prune import VarPruneEnv
from rewards.reward import RewardConfig, RewardFunction

RANGE = (0.25, 0.6)
PROMPT = "a small blue dotted star at the top left and a large red solid circle in the centre on a noisy navy background"


@pytest.fixture(scope="module")
def env():
    return VarPruneEnv(EnvConfig(budget_range=RANGE, allow_drop_unconditional=True, prompt_embedding_dim=0,
                                 reward=RewardConfig.embedded_budget(clip_weight=0.0)))


def _run(env, budget, actions):
    obs, info = env.reset(seed=0, options={"prompt": PROMPT, "seed": 1, "budget": budget})
    observations, done, i = [obs], False, 0
    while not done:
        obs, reward, done, _, info = env.step(np.asarray(actions[i], np.float32))
        observations.append(obs)
        i += 1
    return observations, reward, info


def test_budget_and_budget_left_are_the_last_two_observation_entries(env):
    observations, _, info = _run(env, 0.4, [[-1.0, -1.0]] * 4)
    assert observations[0][-2] == np.float32(0.4)
    spent0 = env.guard.forced_fraction(env.first_controllable)
    assert observations[0][-1] == pytest.approx(0.4 - spent0, abs=1e-6)
    assert observations[-1][-1] == pytest.approx(0.4 - info["flops_fraction"], abs=1e-6)
    assert env.observation_space.shape[0] == env.observer.dim


@pytest.mark.parametrize("budget", [0.25, 0.31, 0.4, 0.52, 0.6])
def test_guard_keeps_every_image_within_its_budget_and_uses_it(env, budget):
    rng = np.random.default_rng(int(budget * 100))
    for _ in range(3):
        actions = rng.uniform(-1, 1, (4, 2))
        actions[:, 0] = np.minimum(actions[:, 0], 0.7)  # mostly run the scale: the guard has work to do
        _, _, info = _run(env, budget, actions)
        assert info["flops_fraction"] <= budget + 1e-9
    # all-zero ratios never fit these budgets: the guard projects them, and the image spends most of b
    _, _, info = _run(env, budget, [[-1.0, -1.0]] * 4)
    assert info["guarded"] >= 1 and budget - 0.1 < info["flops_fraction"] <= budget + 1e-9


def test_guard_leaves_decisions_that_fit_unchanged(env):
    _, _, info = _run(env, 0.6, [[-1.0, 1.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]])  # run 4x4 without CFG, skip rest
    assert info["guarded"] == 0 and info["ratios"][3:] == [0.0, 1.0, 1.0, 1.0]
    assert info["drop_unconditional"][3] is True


def test_guard_projection_is_the_most_tokens_that_fit():
    from embedded.loaders import load_embedded_generator

    g = load_embedded_generator()
    guard = BudgetGuard(g)
    st = g.start([PROMPT], [0])
    for _ in range(4):
        g.step(st, 0.0)
    budget = 0.40
    d = guard.decide(st, 0.0, False, budget)
    allowed = budget * guard.flops_full - st.flops_used
    assert d.guarded and d.cost_fraction * guard.flops_full <= allowed + 1e-6
    # one more token would not fit
    side = g.scale_sides[st.scale_index]
    from generator.pruning import tokens_kept

    keep = tokens_kept(side * side, d.ratio)
    more = (side * side - keep - 1 + 0.5) / (side * side)
    assert guard._cost(st, more, False) > allowed


def test_batch_guard_makes_each_images_own_decision():
    """decide_batch (vectorised costs, no binary search) == decide image by image, exactly, on a mixed
    batch whose images spent differently so far, with per-image budgets, CFG drops, skips, decisions
    that fit, ones cut back and ones that must skip."""
    from embedded.loaders import load_embedded_generator

    g = load_embedded_generator()
    guard = BudgetGuard(g)
    rng = np.random.default_rng(0)
    B = 12
    st = g.start([PROMPT] * B, list(range(B)))
    for _ in range(3):
        g.step(st, 0.0)
    kinds = set()
    budgets = [float(x) for x in rng.uniform(0.19, 0.6, B)]
    for _ in range(3, g.num_scales):
        ratios = [float(x) if x < 0.85 else 1.0 for x in rng.random(B)]
        ratios[0] = 0.0
        drops = [bool(x) for x in rng.integers(0, 2, B)]
        batch = guard.decide_batch(st, ratios, drops, budgets)
        alone = [guard.decide(st, ratios[b], drops[b], budgets[b], image=b) for b in range(B)]
        assert batch == alone
        kinds |= {("cut" if d.ratio < 1 else "skipped") if d.guarded else "kept" for d in batch}
        g.step(st, [d.ratio for d in batch], drop_unconditional=[d.drop_unconditional for d in batch])
    assert kinds == {"kept", "cut", "skipped"}  # every branch of the guard was compared


def test_constraint_term_is_zero_inside_the_budget_and_linear_beyond():
    rf = RewardFunction(RewardConfig.embedded_budget(clip_weight=0.0))
    img = torch.rand(1, 3, 64, 64)
    inside, t_in = rf.terminal(img, img, PROMPT, used_fraction=0.30, budget=0.35)
    over, t_over = rf.terminal(img, img, PROMPT, used_fraction=0.45, budget=0.35)
    assert inside == 0.0 and t_in["budget_excess"] == 0.0
    assert over == pytest.approx(-5.0 * 0.10) and t_over["budget_excess"] == pytest.approx(0.10)


def test_bad_budgets_are_errors_naming_the_range(env):
    with pytest.raises(ValueError, match=r"outside the trained range \[0.25, 0.6\]"):
        env.reset(options={"budget": 0.7})
    with pytest.raises(ValueError, match="below"):
        check_budget_range((0.1, 0.5), minimum=0.18)
    with pytest.raises(ValueError, match="0 < low <= high <= 1"):
        EnvConfig(budget_range=(0.6, 0.3)).validate()
    assert check_budget(0.3, RANGE) == 0.3
    with pytest.raises(ValueError, match="budget-conditioned"):
        VarPruneEnv(EnvConfig(prompt_embedding_dim=0, reward=RewardConfig.embedded(clip_weight=0.0))).reset(
            options={"budget": 0.3})


def test_generate_with_a_budget_conditioned_agent_stays_within_the_budget(budget_run, tmp_path, capsys):
    import json

    out = tmp_path / "gen"
    assert generate.main(["--prompts", "test", "--num-prompts", "6", "--agent", str(budget_run), "--budget", "0.3",
                          "--out", str(out)]) == 0
    fracs = [im["flops_fraction"] for p in out.glob("gen_images_*/config.json")
             for im in json.loads(p.read_text())["images"]]
    assert len(fracs) == 6 and all(f <= 0.3 + 1e-9 for f in fracs)
    assert generate.main(["--prompts", "test", "--num-prompts", "1", "--agent", str(budget_run), "--budget", "0.9",
                          "--out", str(out)]) == 2
    assert "outside the trained range [0.25, 0.6]" in capsys.readouterr().err
    assert generate.main(["--prompts", "test", "--num-prompts", "1", "--budget", "0.3", "--out", str(out)]) == 2
    capsys.readouterr()


def test_generate_with_a_budget_conditioned_agent_and_no_budget_uses_fastvars_flops(budget_run, tmp_path, capsys):
    """The README's own command, `generate.py --agent RUN` with no --budget, works: the documented default is
    FastVAR's transformer FLOPs on this generator, printed, and every image stays within it."""
    import json

    from envs.factory import make_generator
    from envs.config import EnvConfig
    from generator.schedules import FastVARSchedule, schedule_ratios

    gen = make_generator(EnvConfig())
    fastvar = gen.flops_fraction(schedule_ratios(FastVARSchedule(), gen.num_scales))
    out = tmp_path / "gen"
    assert generate.main(["--prompts", "test", "--num-prompts", "3", "--agent", str(budget_run), "--out", str(out)]) == 0
    assert f"FastVAR's transformer FLOPs on this generator, {fastvar:.4f}" in capsys.readouterr().out
    images = [im for p in out.glob("gen_images_*/config.json") for im in json.loads(p.read_text())["images"]]
    assert len(images) == 3 and all(im["flops_fraction"] <= fastvar + 1e-9 for im in images)
    assert 0.34 < fastvar < 0.35


def test_evaluate_agent_budgets_give_one_agent_row_per_budget(budget_run, tmp_path, capsys):
    """--budgets: the run once per budget, each with its own rows in summary['budgets']; budgets outside
    (0, 1] and duplicates are errors naming them (one outside the trained range is an n/a agent row:
    tests/test_evaluate.py)."""
    import json

    import evaluate_agent
    from evaluation.compare_plan import parse_budget

    assert parse_budget("fastvar", 0.35) == pytest.approx(0.35)
    assert parse_budget("0.8fastvar", 0.35) == pytest.approx(0.28)
    assert parse_budget("0.3", 0.35) == 0.3
    with pytest.raises(ValueError, match="'half' is not a budget"):
        parse_budget("half", 0.35)
    base = ["--run", str(budget_run), "--num-prompts", "2", "--seeds", "0", "--no-static-search", "--latency-images", "0"]
    out = tmp_path / "e"
    assert evaluate_agent.main(base + ["--budgets", "0.3", "0.5", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    agents = [e["agent"] for e in summary["budgets"]]
    assert agents == ["rl:b@0.300", "rl:b@0.500"] and [e["budget"] for e in summary["budgets"]] == [0.3, 0.5]
    for name, b in (("rl:b@0.300", 0.3), ("rl:b@0.500", 0.5)):
        assert summary["methods"][name]["metrics"]["flops_fraction"]["mean"] <= b + 1e-9
    assert "random:b@0.500" in summary["methods"]
    assert "Per budget" in (out / "table.md").read_text()
    assert evaluate_agent.main(base + ["--budgets", "0.3", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "--budgets: budget 1.5000 is outside (0, 1]" in capsys.readouterr().err
    assert evaluate_agent.main(base + ["--budgets", "0.3", "0.30", "--out", str(tmp_path / "x")]) == 2
    assert "twice" in capsys.readouterr().err


def test_default_train_config_is_budget_conditioned_with_cfg_dropping():
    """The default `python train.py` trains one agent for every budget in [0.2, 0.6], with the CFG-drop
    lever and the quality-only reward; --fixed-budget (or --flops-budget) gives the earlier agent."""
    def resolve(argv):
        return train.resolve_env_config(train.build_parser().parse_args(argv))

    cfg = resolve([])
    assert cfg.budget_range == (0.2, 0.6) and cfg.allow_drop_unconditional
    assert cfg.reward.to_dict() == RewardConfig.embedded_budget().to_dict()
    assert not resolve(["--no-allow-drop-unconditional"]).allow_drop_unconditional
    for argv in (["--fixed-budget"], ["--flops-budget", "0.3"], ["--reward-preset", "embedded"]):
        fixed = resolve(argv)
        assert fixed.budget_range is None and not fixed.allow_drop_unconditional, argv
    with pytest.raises(ValueError, match="--fixed-budget and --budget-range"):
        resolve(["--fixed-budget", "--budget-range", "0.2", "0.5"])
