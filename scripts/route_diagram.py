"""Write the route machine's diagram into docs/architecture.md (`--check`: fail if stale)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flexmesh.meshcore.route_diagram import mermaid, replace_block

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the doc is stale")
    args = parser.parse_args()
    text = DOC.read_text()
    fresh = replace_block(text, mermaid())
    if args.check:
        return int(fresh != text)
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
