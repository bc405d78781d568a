"""Pre-render a pool of domain samples to an .npz (images uint8 (N, 64, 64, 3), captions).

Training scripts take ``--pool FILE`` to sample batches from memory instead of rendering on the
fly, which keeps a GPU busy when the CPU is the bottleneck.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedded.training import render_pool  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=150_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    t0 = time.time()
    imgs, caps = render_pool(args.n, args.seed, args.workers)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, images=imgs, captions=np.asarray(caps))
    os.replace(tmp, args.out)
    print(f"rendered {len(caps)} samples in {time.time() - t0:.1f}s ({len(caps) / (time.time() - t0):.0f}/s) -> {args.out}")


if __name__ == "__main__":
    main()
