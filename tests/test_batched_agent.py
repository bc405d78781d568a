"""A trained agent on a batch: one policy call per scale for the whole batch, and every image gets the
decisions it gets generated alone (the observation of image b in a batch is its own: its codes, FLOPs,
ratios and prompt), on a short real training run of the embedded default."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import generate
import train
from agents.schedule import load_agent_schedule
from domain import load_prompts
from embedded.loaders import load_embedded_generator

TINY = ["--total-timesteps", "64", "--eval-freq", "64", "--checkpoint-freq", "64", "--eval-episodes", "2",
        "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=1", "--no-progress", "--fixed-budget",
        "--algo", "ppo"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    torch.set_num_threads(2)
    assert train.main(TINY + ["--out", str(out), "--name", "tiny", "--seed", "1"]) == 0
    return out / "tiny"


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def gen(request):
    """The CUDA case serves the CPU-trained agent on a GPU generator (the agent check ignores devices)."""
    return load_embedded_generator(device=request.param)


class CountingModel:
    """Counts the policy's predict calls (instrumentation around the real SB3 model)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def predict(self, obs, deterministic=True):
        self.calls += 1
        return self.model.predict(obs, deterministic=deterministic)


def test_batch_decisions_are_each_images_own(trained, gen):
    agent = load_agent_schedule(trained, gen)
    agent.model = CountingModel(agent.model)
    prompts, seeds = load_prompts("test")[:6], [0, 1, 2, 0, 1, 2]
    _, batch = gen.generate(prompts, seeds, schedule=agent)
    first = agent.layout["first_controllable_scale"]
    # the policy sees one image at a time (agents.schedule.predict_rows): a batch cannot change a decision
    assert agent.model.calls == (gen.num_scales - first) * len(prompts)
    in_batch = [[r.ratio for r in batch.image_reports(b)] for b in range(len(prompts))]
    alone = []
    for p, s in zip(prompts, seeds):
        _, st = gen.generate([p], [s], schedule=agent)
        alone.append([r.ratio for r in st.reports])
    assert in_batch == alone
    assert all(r[:first] == [0.0] * first for r in in_batch)
    assert len({tuple(r) for r in in_batch}) > 1  # the images really got different decisions
    for b in range(len(prompts)):  # and the images themselves: the same codes as generated alone
        _, st = gen.generate([prompts[b]], [seeds[b]], schedule=agent)
        assert torch.equal(batch.f_hat_BChw[b], st.f_hat_BChw[0])


def test_batch_observations_equal_single_image_observations(trained, gen):
    agent = load_agent_schedule(trained, gen)
    prompts, seeds = load_prompts("val")[:3], [4, 5, 6]
    batch = gen.start(prompts, seeds)
    singles = [gen.start([p], [s]) for p, s in zip(prompts, seeds)]
    while not batch.finished:
        obs = agent.observer.observe_batch(batch)
        assert obs.shape == (3, agent.observer.dim)
        for b, st in enumerate(singles):
            assert np.array_equal(obs[b], agent.observer.observe(st)), f"image {b} at scale {batch.scale_index}"
        k, n = batch.scale_index, batch.num_scales
        ratios, drops = agent.ratio(k, n, batch), agent.drop_unconditional(k, n, batch)
        gen.step(batch, ratios, drop_unconditional=drops)
        for b, st in enumerate(singles):
            gen.step(st, agent.ratio(k, n, st), drop_unconditional=agent.drop_unconditional(k, n, st))
    with pytest.raises(ValueError, match="observe_batch"):
        agent.observer.observe(batch)


def test_generate_batch_size_writes_the_same_decisions(trained, tmp_path):
    prompts = tmp_path / "p.tsv"
    prompts.write_text("".join(f"p{i}\t{p}\n" for i, p in enumerate(load_prompts("test")[10:14])))
    for bs in ("1", "3"):
        assert generate.main(["--prompts", str(prompts), "--agent", str(trained), "--out", str(tmp_path / bs),
                              "--batch-size", bs]) == 0
    one = json.loads((tmp_path / "1" / "config_all.json").read_text())
    three = json.loads((tmp_path / "3" / "config_all.json").read_text())
    assert set(one) == set(three) == {"p0", "p1", "p2", "p3"}
    for name in one:
        a, b = one[name]["images"][0], three[name]["images"][0]
        assert a["ratios"] == b["ratios"] and a["flops_total"] == b["flops_total"]
        assert b["batch_size"] == (3 if name != "p3" else 1)
    assert generate.main(["--prompts", str(prompts), "--batch-size", "0", "--out", str(tmp_path / "x")]) == 2
    assert generate.main(["--prompts", str(prompts), "--batch-size", "2", "--dft", "--out", str(tmp_path / "x")]) == 2


def _per_image(path):
    import csv

    return {(r["method"], r["prompt"], r["seed"]): (r["ratios"], r["flops_fraction"]) for r in csv.DictReader(open(path))}


def test_evaluate_agent_batch_size_gives_the_batch_one_decisions(trained, tmp_path):
    """evaluate_agent.py --batch-size 3 generates each method's images three at a time (the agent deciding
    per image, random schedules as per-image ratios in one batch): every image's decisions and FLOPs are
    those of the batch-1 evaluation."""
    import evaluate_agent

    base = ["--run", str(trained), "--num-prompts", "3", "--seeds", "0", "--no-static-search"]
    assert evaluate_agent.main(base + ["--out", str(tmp_path / "b1")]) == 0
    assert evaluate_agent.main(base + ["--batch-size", "3", "--out", str(tmp_path / "b3"), "--json", str(tmp_path / "s.json")]) == 0
    one, three = _per_image(tmp_path / "b1" / "per_image.csv"), _per_image(tmp_path / "b3" / "per_image.csv")
    assert one.keys() == three.keys() and len(one) >= 15
    assert one == three
    assert json.loads((tmp_path / "s.json").read_text())["generation"]["batch_size"] == 3
    assert evaluate_agent.main(base + ["--batch-size", "0", "--out", str(tmp_path / "x")]) == 2
