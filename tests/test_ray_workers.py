"""Scale-out on Ray (envs/ray_vec.py, train.py --workers) with a local ``ray.init(num_cpus=2)``; skipped when
Ray (an optional extra) is not installed. The missing-Ray error runs everywhere."""

from __future__ import annotations

import csv
import json
import sys
import threading
import time

import numpy as np
import pytest

import train
from envs.config import EnvConfig

TINY = ["--total-timesteps", "64", "--eval-freq", "32", "--checkpoint-freq", "32", "--eval-episodes", "2",
        "--hp", "n_steps=32", "--hp", "batch_size=32", "--hp", "n_epochs=1", "--no-progress", "--n-envs", "4", "--fixed-budget",
        "--algo", "ppo"]
PROMPTS = ["a large red solid circle in the centre on a plain gray background",
           "a small blue striped square at the top left on a noisy navy background",
           "a medium green striped cross on the left on a plain black background",
           "a small yellow dotted star at the bottom on a gradient white background"]


def test_workers_without_ray_fail_at_once_saying_how_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the package looks like to import
    t0 = time.perf_counter()
    assert train.main(["--algo", "ppo", "--workers", "2", "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "runs").exists()
    from envs.ray_vec import RayUnavailable, require_ray

    with pytest.raises(RayUnavailable, match=r'pip install -e "\.\[ray\]"'):
        require_ray()


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason='Ray is an optional extra (pip install -e ".[ray]")')
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _curve(run):
    return [(int(r["timesteps"]), float(r["mean_reward"])) for r in csv.DictReader(open(run / "eval_curve.csv"))]


def test_two_workers_give_the_episodes_of_one_batched_env(local_ray):
    """Slot j of the Ray vector env is slot j of one BatchedVarPruneEnv with the same number of slots:
    same prompts, seeds and observations; rewards equal up to the batch rounding of the metrics."""
    from envs.batched import BatchedVarPruneEnv
    from envs.ray_vec import RayVecEnv

    cfg = EnvConfig()
    venv = RayVecEnv(cfg, 4, 2, prompts=PROMPTS)
    try:
        local = BatchedVarPruneEnv(cfg, 4, prompts=PROMPTS)
        venv.seed(3)
        local.seed(3)
        assert np.array_equal(venv.reset(), local.reset())
        rng = np.random.default_rng(1)
        for _ in range(local.controllable):
            a = rng.uniform(-1, 1, (4, 1)).astype(np.float32)
            o1, r1, d1, i1 = venv.step(a)
            o2, r2, d2, i2 = local.step(a)
            assert np.array_equal(o1, o2) and np.array_equal(d1, d2)
            np.testing.assert_allclose(r1, r2, rtol=0, atol=1e-5)
        assert d1.all() and [i["prompt"] for i in i1] == [i["prompt"] for i in i2]
        assert len(set(venv.worker_pids)) == 2
        # a worker that dies is reported with its index and error
        local_ray.kill(venv.workers[1])
        from envs.ray_vec import WorkerError

        with pytest.raises(WorkerError, match="worker 1 of 2 died during step"):
            venv.step(np.zeros((4, 1), np.float32))
    finally:
        venv.close()


@pytest.fixture(scope="module")
def two_worker_run(local_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert train.main(TINY + ["--workers", "2", "--out", str(out), "--name", "w"]) == 0
    return out / "w"


def test_two_worker_run_trains_checkpoints_and_resumes_after_a_worker_dies(local_ray, two_worker_run, tmp_path, capsys):
    run = two_worker_run
    out = tmp_path / "runs"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["workers"] == 2 and cfg["n_envs"] == 4
    assert [t for t, _ in _curve(run)] == [32, 64]
    assert (run / "checkpoints" / "model_64_steps.zip").is_file() and (run / "final_model.zip").is_file()

    # a longer run whose worker is killed once the first checkpoint exists: reported, then resumed
    result = {}
    args = TINY[:]
    args[1] = "4096"
    thread = threading.Thread(target=lambda: result.setdefault("rc", train.main(
        args + ["--workers", "2", "--out", str(out), "--name", "killed"])))
    thread.start()
    ckpts = out / "killed" / "checkpoints"
    deadline = time.time() + 600
    while not list(ckpts.glob("model_*_steps.zip")) and time.time() < deadline and thread.is_alive():
        time.sleep(0.2)
    names = [n for n in local_ray.util.list_named_actors() if n.startswith("varprune-env-")]
    assert names, "no running worker found"
    local_ray.kill(local_ray.get_actor(sorted(names)[-1]))
    thread.join(600)
    assert result.get("rc") == 1
    err = capsys.readouterr().err
    assert "Ray worker" in err and "died" in err and f"python train.py --resume {out / 'killed'}" in err
    step = max(int(p.name.split("_")[1]) for p in ckpts.glob("model_*_steps.zip"))
    saved = json.loads((out / "killed" / "config.json").read_text())
    saved["total_timesteps"] = step + 32  # as if it had been asked for one more interval
    (out / "killed" / "config.json").write_text(json.dumps(saved))
    assert train.main(["--resume", str(out / "killed"), "--no-progress"]) == 0
    assert _curve(out / "killed")[-1][0] == step + 32


def test_evaluate_agent_with_two_workers_matches_the_local_evaluation(local_ray, two_worker_run, tmp_path):
    import evaluate_agent

    base = ["--run", str(two_worker_run), "--num-prompts", "2", "--seeds", "0", "--no-static-search",
            "--batch-size", "2"]
    assert evaluate_agent.main(base + ["--out", str(tmp_path / "local")]) == 0
    assert evaluate_agent.main(base + ["--workers", "2", "--out", str(tmp_path / "ray")]) == 0
    rows = {}
    for name in ("local", "ray"):
        rows[name] = {(r["method"], r["prompt"]): (r["ratios"], r["flops_fraction"], r["ssim"])
                      for r in csv.DictReader(open(tmp_path / name / "per_image.csv"))}
    assert rows["local"].keys() == rows["ray"].keys()
    for key, (ratios, flops, ssim) in rows["local"].items():
        r2, f2, s2 = rows["ray"][key]
        assert (ratios, flops) == (r2, f2)  # one image per worker here: the same decisions as in one batch of 2
        assert abs(float(ssim) - float(s2)) < 1e-4
