"""How a command prints its report: as JSON with `--json`, else as its table."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any


def show(args: argparse.Namespace, report: Any, table: Callable[[Any], None]) -> Any:
    """Print a report as JSON (`--json`) or as its table; return the report."""
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        table(report)
    return report
