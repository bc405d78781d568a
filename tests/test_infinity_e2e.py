"""The Infinity user's whole path on a CPU, end to end, with a tiny random Infinity on disk:

    python -m infinity_backend make-tiny DIR        (transformer, BSQ VAE, T5 in upstream's file formats)
    python -m infinity_backend check DIR/opts.json
    python train.py --generator infinity --infinity-options DIR/opts.json --reward-preset infinity ...
    python evaluate_agent.py --run RUN ...          (FastVAR, the best static schedule of a small grid, the agent)
    python generate.py --generator infinity --agent RUN --batch-size 4 ...
    python generate.py ... --prompts geneval:metadata.jsonl --batch-size 2   (GenEval's layout)

and the same checkpoint read through FastVAR's fork. Each command runs as a user runs it (a
subprocess), on the small CLIP shipped in weights/ and an LPIPS AlexNet with random weights saved as
torchvision's file (no ImageNet weights offline). Upstream imports flash_attn, which installs only
with CUDA: the direct loader puts its SDPA stand-in (infinity_backend/flash_attn_stand_in.py) in its
place on the CPU. Needs both checkouts:

    INFINITY_SRC=/path/to/Infinity FASTVAR_SRC=/path/to/FastVAR python -m pytest -q tests/test_infinity_e2e.py

Set INFINITY_E2E_LOG=FILE to keep every command's output and wall clock (docs/infinity-cpu.log).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

INFINITY_SRC = os.environ.get("INFINITY_SRC")
FASTVAR_SRC = os.environ.get("FASTVAR_SRC")
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (INFINITY_SRC and FASTVAR_SRC), reason=(
    "set INFINITY_SRC to a FoundationVision/Infinity checkout and FASTVAR_SRC to a csguoh/FastVAR checkout "
    "(repo root or its Infinity/ folder) to run the Infinity user's whole path on a tiny random checkpoint"))

TRAIN = ["a photo of a cat", "a red car on a street", "a bowl of fruit on a table", "a lighthouse at dusk"]
VAL = ["a small boat on a lake", "a dog in the snow"]
TEST = ["a green apple on a plate", "a city skyline at night", "a horse in a field"]
GENEVAL = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
           {"tag": "two_object", "include": [{"class": "dog", "count": 1}, {"class": "car", "count": 1}],
            "prompt": "a photo of a dog and a car"},
           {"tag": "colors", "include": [{"class": "apple", "count": 1, "color": "green"}],
            "prompt": "a photo of a green apple"}]


class Commands:
    """Runs each step as a subprocess from the repository root; keeps the output and wall clock."""

    def __init__(self, log: Path) -> None:
        self.log, self.times = log, {}
        log.write_text("")

    def __call__(self, step: str, *argv: str) -> str:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
        self.times[step] = time.perf_counter() - t0
        with self.log.open("a") as f:
            f.write(f"$ python {' '.join(argv)}\n{p.stdout}{p.stderr}[{step}: exit {p.returncode}, "
                    f"{self.times[step]:.1f} s wall]\n\n")
        assert p.returncode == 0, f"{step} failed (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
        return p.stdout + p.stderr


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import torch
    import torchvision

    d = tmp_path_factory.mktemp("infinity_e2e")
    (d / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (d / "val.txt").write_text("\n".join(VAL) + "\n")
    # the prompt table an Infinity user keeps: a header naming the prompt column, one more column
    (d / "test.tsv").write_text("id\tprompt\tcategory\n" + "".join(f"t{i}\t{p}\tmisc\n" for i, p in enumerate(TEST)))
    (d / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in GENEVAL))
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), d / "alexnet-random.pth")
    return d


def test_whole_infinity_path_on_the_cpu(work):
    run = Commands(Path(os.environ.get("INFINITY_E2E_LOG") or work / "e2e.log"))
    tiny, runs = work / "tiny", work / "runs"
    out = run("make-tiny", "-m", "infinity_backend", "make-tiny", str(tiny), "--src", INFINITY_SRC)
    opts = tiny / "opts.json"
    assert "wrote" in out and opts.is_file() and (tiny / "t5_tiny" / "tokenizer.json").is_file()
    out = run("check", "-m", "infinity_backend", "check", str(opts))
    assert "options OK" in out and "per image in a batch" in out

    lpips = ["--lpips-backbone", str(work / "alexnet-random.pth")]
    out = run("train", "train.py", "--generator", "infinity", "--infinity-options", str(opts), "--reward-preset",
              "infinity", "--train-prompts", str(work / "train.txt"), "--val-prompts", str(work / "val.txt"), *lpips,
              "--total-timesteps", "192", "--n-envs", "8", "--num-controllable", "3", "--image-seeds", "1",
              "--hp", "n_steps=48", "--hp", "batch_size=24", "--hp", "n_epochs=2", "--eval-freq", "96",
              "--checkpoint-freq", "96", "--out", str(runs), "--name", "tiny")
    agent = runs / "tiny"
    summary = json.loads((agent / "summary.json").read_text())
    config = json.loads((agent / "config.json").read_text())
    assert (agent / "best_model.zip").is_file() and "FastVAR on validation" in out
    assert config["env"]["generator"] == "infinity" and config["env"]["infinity"]["model_path"] == str(tiny / "infinity_tiny.pth")
    assert summary["evaluations"] == 2 and 0 < summary["fastvar"]["flops_fraction"] < 1

    ev = work / "eval"
    out = run("evaluate", "evaluate_agent.py", "--run", str(agent), "--prompts", str(work / "test.tsv"),
              "--search-prompts", str(work / "val.txt"), "--seeds", "0", "--grid-ratios", "0.5", "--refine-rounds", "0",
              "--no-oracle", *lpips, "--cache-dir", str(work / "cache"), "--out", str(ev))
    methods = json.loads((ev / "summary.json").read_text())["methods"]
    assert {"original", "fastvar", "rl:tiny", "best_static"} <= set(methods)
    assert (ev / "table.md").is_file() and (ev / "per_image.csv").is_file()

    gen = work / "gen_agent"
    (work / "gen.tsv").write_text("".join(f"p{i}\t{p}\n" for i, p in enumerate(TEST)))
    out = run("generate --agent --batch-size 4", "generate.py", "--generator", "infinity", "--infinity-options", str(opts),
              "--agent", str(agent), "--prompts", str(work / "gen.tsv"), "--images-per-prompt", "2", "--batch-size", "4",
              "--out", str(gen))
    config_all = json.loads((gen / "config_all.json").read_text())
    assert set(config_all) == {"p0", "p1", "p2"}
    assert sorted(im["batch_size"] for c in config_all.values() for im in c["images"]) == [2, 2, 4, 4, 4, 4]
    assert all((gen / f"gen_images_p{i}" / f"{k}.jpg").is_file() for i in range(3) for k in (1, 2))

    ge = work / "geneval_agent"
    out = run("generate geneval", "generate.py", "--generator", "infinity", "--infinity-options", str(opts),
              "--agent", str(agent), "--prompts", f"geneval:{work / 'metadata.jsonl'}", "--images-per-prompt", "2",
              "--batch-size", "2", "--out", str(ge))
    for i, meta in enumerate(GENEVAL):
        folder = ge / f"{i:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == meta
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        records = json.loads((folder / "config.json").read_text())["images"]
        assert [r["seed"] for r in records] == [0, 1] and all(0 < r["flops_fraction"] < 1 for r in records)

    # the same checkpoint files through FastVAR's fork: the same images (ratio 0 and FastVAR's schedule
    # run only submodules both forks share)
    fork_opts = work / "opts_fastvar.json"
    fork_opts.write_text(json.dumps({**json.loads(opts.read_text()), "src": FASTVAR_SRC}))
    run("check (FastVAR's fork)", "-m", "infinity_backend", "check", str(fork_opts))
    images = {}
    for name, path in (("infinity", opts), ("fastvar_fork", fork_opts)):
        run(f"generate fastvar ({name})", "generate.py", "--generator", "infinity", "--infinity-options", str(path),
            "--schedule", "fastvar", "--prompt", TEST[0], "--name", "p", "--out", str(work / name))
        from PIL import Image

        images[name] = np.asarray(Image.open(work / name / "gen_images_p" / "1.jpg"))
    assert np.array_equal(images["infinity"], images["fastvar_fork"])
    with Path(run.log).open("a") as f:
        f.write("wall clock per step (s): " + json.dumps({k: round(v, 1) for k, v in run.times.items()}) + "\n")
