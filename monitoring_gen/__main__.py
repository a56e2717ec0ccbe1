"""``python -m monitoring_gen [--root DIR]``: write every generated monitoring file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from monitoring_gen.generate import write_all

REPO_ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monitoring_gen",
        description="Write the generated dashboards, rules and example monitoring configs.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT,
        help="folder to write into, laid out like the repository (default: the repository)",
    )
    args = parser.parse_args(argv)
    for path in write_all(args.root):
        print(path.relative_to(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
