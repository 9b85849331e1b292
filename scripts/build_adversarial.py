"""Regenerate the probe's adversarial evaluation set from the development prompts.

    python scripts/build_adversarial.py [--data ../shared/data/prompts] [--seed 0]

Reads only the adversarial slice of each development source (`split_of(row) == "adversarial"`,
which the probe's build never reads) and never `shared/data/holdout`. Deterministic: same rows
and seed, same file. `flexmesh probe eval --adversarial` reads what this writes.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flexmesh.actors.probe.adversarial import build  # noqa: E402
from flexmesh.actors.probe.data import (  # noqa: E402
    ADVERSARIAL_SET,
    DEV_SOURCES,
    read_prompts,
    source_of,
    split_of,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "prompts"))
    parser.add_argument("--out", default=str(ADVERSARIAL_SET))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = Path(args.data)
    if "holdout" in data.parts:
        raise SystemExit("refusing to build from shared/data/holdout (evaluation only)")
    rows = {
        source_of(name): [r for r in read_prompts(data / name) if split_of(r) == "adversarial"]
        for name in DEV_SOURCES
        if (data / name).exists()
    }
    out = build(rows, args.seed)
    # mtime=0: the same rows give the same bytes, so a rebuild shows no diff.
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in out:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"wrote {len(out)} rows to {args.out}: {dict(Counter(r['family'] for r in out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
