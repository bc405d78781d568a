"""How the DomainEval judge reads the best images the embedded model's tokenizer can express.

    python scripts/judge_on_reconstructions.py [--n 1000]

Held-out renders (the judge CLI's, ``judge.HELDOUT_RENDER_SEED``) are encoded and decoded by
the shipped VQ tokenizer, and both versions are judged against their captions. The reconstructions are
a ceiling for the generator (it can only emit token maps the tokenizer decodes), so the gap between
the two rows is how much of a generated image's DomainEval score the tokenizer alone costs, or how
much of it is the judge not reading VQ-decoded images as well as renders. Nothing is trained here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain import parse_caption, sample_batch  # noqa: E402
from embedded.loaders import load_tokenizer  # noqa: E402
from generator.images import to_uint8  # noqa: E402
from judge import ATTRIBUTES, HELDOUT_RENDER_SEED, DomainJudge, pooled_per_attribute, score_scene  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="held-out renders")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error(f"--n must be >= 1, got {args.n}")
    judge, tok = DomainJudge.load(), load_tokenizer()
    imgs, caps = sample_batch(HELDOUT_RENDER_SEED, args.n)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        rec = to_uint8(torch.cat([tok.decode(tok.indices_to_f_hat(tok.encode_indices(c))) for c in x.split(100)]))
    print(f"{'images':<26}" + "".join(f"{a:>11}" for a in ATTRIBUTES) + f"{'attr acc':>10}{'scene acc':>11}")
    for name, im in (("renders", imgs), ("tokenizer reconstructions", rec)):
        seen = judge.predict(im)
        scores = [score_scene(s, parse_caption(c)) for s, c in zip(seen, caps)]
        per = pooled_per_attribute(seen, caps)
        print(f"{name:<26}" + "".join(f"{per[a]:>11.4f}" for a in ATTRIBUTES)
              + f"{np.mean([s.attribute_accuracy for s in scores]):>10.4f}{np.mean([s.scene_accuracy for s in scores]):>11.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
