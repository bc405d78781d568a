"""scripts/gpu_deep_model.py rehearsed on CPU at tiny size: two sittings (the second on a "fresh machine":
another --work folder, resuming from only the files a call can carry), the codes file against re-encoding,
the returned files against the device's limits, open_clip from a vendored copy (the second sitting runs in
a process that cannot see the installed one), and bad inputs.

The models keep their real widths (the sizes of what comes back are the real ones); the pool, steps and
card are tiny. About 50 s on one thread, most of it train_tokenizer.py's 512-image held-out evaluation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from generator.weights_io import read_metadata
from scripts import gpu_deep_model as gdm

ROOT = Path(__file__).resolve().parent.parent
DEEP = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
TINY = ["--device", "cpu", "--threads", "1", "--pool-n", "32", "--render-workers", "1", "--tokenizer-steps", "1",
        "--tokenizer-batch", "4", "--generator-batch", "2"]
#: what the second sitting carries: the tracked tree (~30 MiB) plus the whole returned folder would pass 64 MiB
CARRIED = ("tokenizer.safetensors", "generator.safetensors", "generator.opt.safetensors", "state.json")


#: run in a child process that cannot see the installed open_clip, ftfy and wcwidth, as on the GPU machine
CHILD = """
import importlib.machinery, json, sys
sys.path.insert(0, ROOT)
class NotInstalled:  # site-packages' copies of the vendored packages are invisible
    @staticmethod
    def find_spec(name, path=None, target=None):
        if path is None and name in HIDDEN:
            spec = importlib.machinery.PathFinder.find_spec(name, [p for p in sys.path if "-packages" not in p])
            if spec is None:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return spec
sys.meta_path.insert(0, NotInstalled)
from scripts import gpu_deep_model as gdm
try:
    gdm.ensure_open_clip(gdm.Path(NOWHERE))
    raise AssertionError("open_clip imported although hidden")
except SystemExit as e:
    assert "--vendor-to" in str(e), e
rc = gdm.main(ARGV)
import ftfy, open_clip, wcwidth
assert all(m.__file__.startswith(VENDOR) for m in (ftfy, open_clip, wcwidth)), open_clip.__file__
from embedded.text import tokenize
print(json.dumps({"rc": rc, "ids": tokenize([CAPTION], 48)[0].tolist()}))
"""
CAPTION = "a small blue striped square at the top left on a noisy navy background"


@pytest.fixture(scope="module")
def sittings(tmp_path_factory):
    """Sitting 1 (in this process) trains the tokenizer and one generator step; sitting 2 resumes the
    generator for one more step from the carried files in a fresh --work and measures the card, in a
    process without open_clip installed (it comes from the vendored copy, as on the GPU machine)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("gpu_deep")
    out1, out2, carry, vendor = tmp / "out1", tmp / "out2", tmp / "carry", tmp / "vendor"
    assert gdm.main(TINY + ["--out", str(out1), "--work", str(tmp / "work1"), "--generator-steps", "1",
                            "--stages", "render,tokenizer,codes,generator"]) == 0
    carry.mkdir()
    for name in CARRIED:
        shutil.copy(out1 / name, carry / name)
    assert [p.name for p in gdm.vendor_open_clip(vendor)] == list(gdm.VENDOR_PACKAGES)
    argv = TINY + ["--out", str(out2), "--work", str(tmp / "work2"), "--resume-from", str(carry), "--vendor-dir",
                   str(vendor), "--generator-steps", "2", "--stages", "generator,card", "--card-prompts", "2",
                   "--card-real", "8", "--card-latency-repeats", "0"]
    values = {"ROOT": str(ROOT), "HIDDEN": gdm.VENDOR_PACKAGES, "NOWHERE": str(tmp / "nowhere"), "ARGV": argv,
              "VENDOR": str(vendor), "CAPTION": CAPTION}
    code = "".join(f"{k} = {v!r}\n" for k, v in values.items()) + CHILD
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "HOME": str(tmp)})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (tmp / "sitting2.json").write_text(run.stdout.strip().splitlines()[-1])
    return tmp


def test_first_sitting_returns_loadable_10_scale_weights_within_the_return_limits(sittings):
    from embedded.loaders import load_embedded_generator

    out = sittings / "out1"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tokenizer.safetensors", "tokenizer.opt.safetensors", "generator.safetensors", "generator.opt.safetensors",
         "generator.opt-m.safetensors", "state.json"])
    assert gdm.return_problems(out) == []
    g = load_embedded_generator(tokenizer_path=out / "tokenizer.safetensors", generator_path=out / "generator.safetensors")
    assert g.scale_sides == DEEP
    assert read_metadata(out / "tokenizer.safetensors")["tokenizer"]["channel_mult"] == [1, 4, 8]
    assert read_metadata(out / "generator.safetensors")["transformer"]["scales"] == list(DEEP)
    # the generator's moments (2 x 11.5 MB in bfloat16) do not fit one returned file; the tokenizer's do
    assert all(p.stat().st_size < gdm.SHARD_BYTES + 2**20 for p in out.iterdir())


def test_second_sitting_continues_the_step_count_and_the_optimizer(sittings):
    state = json.loads((sittings / "out2" / "state.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in state["generator"]["sittings"]] == [(0, 1), (1, 2)]
    assert read_metadata(sittings / "out2" / "generator.safetensors")["steps"] == 2
    assert state["generator"]["tokenizer_sha256"] == state["tokenizer"]["sha256"]
    ck = torch.load(sittings / "work2" / "ck_generator" / "last.pt", weights_only=True)
    # AdamW's own step counters went on from the restored state: a fresh optimizer would say 1
    assert {float(s["step"]) for s in ck["opt"]["state"].values()} == {2.0}


@pytest.mark.parametrize("name, carried", [("tokenizer", "out1"), ("generator", "out1"), ("generator", "carry")])
def test_returned_files_rebuild_the_torch_checkpoint(sittings, tmp_path, name, carried):
    """Weights to float16 and moments to bfloat16 precision; config (with its tuples), param groups and
    step exactly; without the .opt-m file the first moments restart at zero."""
    original = torch.load(sittings / "work1" / f"ck_{name}" / "last.pt", weights_only=True)
    assert gdm.restore_checkpoint(sittings / carried, name, tmp_path / "last.pt") == original["step"] == 1
    rebuilt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert rebuilt["config"] == original["config"] and rebuilt["step"] == original["step"]
    assert json.dumps(rebuilt["opt"]["param_groups"]) == json.dumps(original["opt"]["param_groups"])
    for k, v in original["model"].items():
        assert torch.equal(rebuilt["model"][k], v.half().float())
    has_first = (sittings / carried / f"{name}.opt-m.safetensors").is_file() or name == "tokenizer"
    for i, s in original["opt"]["state"].items():
        r = rebuilt["opt"]["state"][i]
        assert torch.equal(r["step"], s["step"])
        assert torch.equal(r["exp_avg_sq"], s["exp_avg_sq"].bfloat16().float())
        assert torch.equal(r["exp_avg"], s["exp_avg"].bfloat16().float() if has_first else torch.zeros_like(s["exp_avg"]))


def test_codes_file_gives_the_same_teacher_forcing_batches_as_re_encoding(sittings):
    from embedded.loaders import load_tokenizer
    from embedded.training import ImagePool
    from scripts import train_generator
    from scripts.train_generator import CodesPool, make_batches

    work1, work2, tok_path = sittings / "work1", sittings / "work2", sittings / "out1" / "tokenizer.safetensors"
    # the second sitting rebuilt the pool and the codes on its "fresh machine": the same codes
    assert np.array_equal(np.load(work1 / "codes.npz")["codes"], np.load(work2 / "codes.npz")["codes"])
    again = sittings / "again.npz"  # the command-line way: train_generator.py --pool FILE --write-codes FILE
    train_generator.main(["--device", "cpu", "--tokenizer", str(tok_path), "--pool", str(work1 / "pool.npz"),
                          "--write-codes", str(again)])
    assert np.array_equal(np.load(again)["codes"], np.load(work1 / "codes.npz")["codes"])
    tok, cpu = load_tokenizer(tok_path), torch.device("cpu")
    images = ImagePool(work1 / "pool.npz", cpu, seed=7)
    codes = CodesPool(work1 / "codes.npz", cpu, 7, tok_path, tok.cfg.scales)
    for batch in (8, 3):
        ids_a, mask_a, idx_a = make_batches(tok, images, None, batch, cpu, 48)()
        ids_b, mask_b, idx_b = make_batches(tok, codes, None, batch, cpu, 48)()
        assert torch.equal(ids_a, ids_b) and torch.equal(mask_a, mask_b)
        assert all(torch.equal(a, b) for a, b in zip(idx_a, idx_b))
        inputs_a, inputs_b = tok.teacher_forcing_inputs(idx_a), tok.teacher_forcing_inputs(idx_b)
        assert all(torch.equal(a, b) for a, b in zip(inputs_a, inputs_b))


def test_card_measures_the_returned_weights(sittings):
    card = json.loads((sittings / "out2" / "state.json").read_text())["card"]
    assert card["scales"] == list(DEEP) and card["num_test_prompts"] == 2 and np.isfinite(card["tokenizer_psnr_db"])
    assert 0 < card["flops_fraction_heavy_skip"] < card["flops_fraction_fastvar"] < 1
    assert 0 <= card["clip_r1_generated"] <= 1 and "latency" in card["skipped"]
    assert (sittings / "out2" / "samples.png").stat().st_size > 0


def test_mismatched_returned_files_are_refused(sittings, tmp_path):
    shutil.copy(sittings / "out1" / "generator.safetensors", tmp_path / "generator.safetensors")
    with pytest.raises(SystemExit, match="is not the model of"):  # weights of step 1, checkpoint of step 2
        gdm.export_optimizer(sittings / "work2" / "ck_generator" / "last.pt", tmp_path, "generator")
    shutil.copy(sittings / "out2" / "generator.opt.safetensors", tmp_path / "generator.opt.safetensors")
    with pytest.raises(SystemExit, match="mixes two sittings"):
        gdm.restore_checkpoint(tmp_path, "generator", tmp_path / "last.pt")
    (tmp_path / "generator.opt.safetensors").unlink()
    with pytest.raises(SystemExit, match="--fresh generator"):
        gdm.restore_checkpoint(tmp_path, "generator", tmp_path / "last.pt")


@pytest.mark.parametrize("argv, message", [
    (["--stages", "render,train"], "unknown stage(s) ['train']; allowed: render,tokenizer,codes,generator,card"),
    (["--generator-budget-s", "0"], "--generator-budget-s must be > 0 seconds, got 0.0"),
    (["--pool-n", "0"], "--pool-n must be >= 1, got 0"),
    (["--fresh", "clip"], "--fresh clip: allowed tokenizer,generator"),
    (["--scales", "1,2,4,8"], "the last scale (8) must equal the latent size 16"),
    (["--resume-from", "no_such_dir"], "--resume-from no_such_dir: no state.json there"),
    (["--generator-arch", "128,4"], "--generator-arch takes WIDTH,DEPTH,HEADS, got 128,4"),
    ([], "--out DIR is required"),
])
def test_bad_options_are_argparse_errors_naming_the_value(capsys, tmp_path, argv, message):
    out = [] if argv == [] else ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as e:
        gdm.parse_args(argv + out)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_sittings_that_would_stop_half_way_are_refused_before_training(sittings, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # another shape than the folder's
        gdm.parse_args(["--out", str(tmp_path / "o"), "--resume-from", str(sittings / "out1"), "--scales", "1,2,4,8",
                        "--channel-mult", "1,4,4,8"])
    assert e.value.code == 2 and "holds scales [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="need a tokenizer"):
        gdm.main(TINY + ["--out", str(tmp_path / "a"), "--work", str(tmp_path / "w"), "--stages", "generator"])
    with pytest.raises(SystemExit, match="pass --fresh generator"):  # a retrained tokenizer orphans the generator
        gdm.main(TINY + ["--out", str(tmp_path / "b"), "--work", str(tmp_path / "w"), "--resume-from",
                         str(sittings / "out1"), "--tokenizer-steps", "2", "--stages", "tokenizer,generator"])
    assert not (tmp_path / "w" / "pool.npz").exists()  # refused before rendering anything


def test_train_generator_refuses_bad_codes_options(sittings, tmp_path, capsys):
    from scripts import train_generator

    codes = sittings / "work1" / "codes.npz"
    for argv, message in [(["--codes", str(codes), "--pool", "p.npz"], "give one"),
                          (["--codes", str(tmp_path / "none.npz")], "no such file"),
                          (["--write-codes", str(tmp_path / "c.npz")], "needs --pool FILE")]:
        with pytest.raises(SystemExit) as e:
            train_generator.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err
    from embedded.loaders import TOKENIZER_WEIGHTS  # the shipped 8x8 tokenizer did not make these codes

    with pytest.raises(SystemExit, match="made by another tokenizer"):
        train_generator.CodesPool(codes, torch.device("cpu"), 0, TOKENIZER_WEIGHTS, DEEP)


def test_a_smaller_generator_trains_on_the_returned_tokenizer_and_logs_its_curve(sittings, tmp_path):
    """The CPU attempt's shape (--generator-arch): a narrower, shallower generator, its learning curve in
    the work folder (what the projection of later sittings reads)."""
    from embedded.loaders import load_embedded_generator

    carry = tmp_path / "carry"
    carry.mkdir()
    for name in ("tokenizer.safetensors", "tokenizer.opt.safetensors", "state.json"):
        shutil.copy(sittings / "out1" / name, carry / name)
    out, work = tmp_path / "out", tmp_path / "work"
    assert gdm.main(TINY + ["--out", str(out), "--work", str(work), "--resume-from", str(carry), "--stages",
                            "generator", "--generator-steps", "1", "--generator-arch", "64,2,2"]) == 0
    cfg = read_metadata(out / "generator.safetensors")["transformer"]
    assert (cfg["width"], cfg["depth"], cfg["num_heads"]) == (64, 2, 2)
    g = load_embedded_generator(tokenizer_path=out / "tokenizer.safetensors", generator_path=out / "generator.safetensors")
    assert g.scale_sides == DEEP
    rows = (work / "ck_generator" / "curve.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "seconds", "loss", "acc_last"] and rows[1].split("\t")[0] == "0"
    assert float(rows[1].split("\t")[2]) > 0


def test_train_generator_refuses_a_width_its_heads_do_not_divide(capsys):
    from scripts import train_generator

    with pytest.raises(SystemExit) as e:
        train_generator.parse_args(["--width", "100", "--heads", "6"])
    assert e.value.code == 2 and "--width 100 is not divisible by --heads 6" in capsys.readouterr().err


def test_second_sitting_ran_with_open_clip_from_the_vendored_copy(sittings):
    """The child process could not import the installed open_clip; from the vendored copy it tokenised
    captions as the installed copy does, and the sitting returned 0 (everything comes back)."""
    from embedded.text import tokenize

    child = json.loads((sittings / "sitting2.json").read_text())
    assert child["rc"] == 0 and child["ids"] == tokenize([CAPTION], 48)[0].tolist()


def test_tracked_tree_leaves_room_to_carry_a_returned_folder():
    """A device call carries at most 64 MiB (tracked files included) and returns files of at most 16 MiB;
    the tracked tree stays <= 48 MiB, no tracked file is over 16 MiB, and none is optimizer state."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = [ROOT / n for n in names.split("\0") if n and (ROOT / n).is_file()]
    assert len(files) > 50, "git ls-files found too few files: is this a checkout?"
    sizes = {p.relative_to(ROOT).as_posix(): p.stat().st_size for p in files}
    assert sum(sizes.values()) <= 48 * 2**20, f"{sum(sizes.values()) / 2**20:.1f} MiB tracked"
    assert not [n for n, s in sizes.items() if s > 16 * 2**20]
    assert not [n for n in sizes if n.endswith((".pt", ".opt.safetensors", ".opt-m.safetensors"))]
