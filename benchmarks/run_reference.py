"""Run the plain Flower + Opacus reference app once (benchmarks/compare.py runs this as its own process).

    python benchmarks/run_reference.py VALUES.toml --supernodes N --log-dir DIR [--timeout-s S]

VALUES.toml holds the app's run config (the keys of reference_app/pyproject.toml's
``[tool.flwr.app.config]``). Exits 0 when Flower reports the run ``finished:completed``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from fedbench.reference import ReferenceRunError, run_reference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("values", type=Path)
    parser.add_argument("--supernodes", type=int, required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    args = parser.parse_args()
    values = tomllib.loads(args.values.read_text(encoding="utf-8"))
    try:
        status = run_reference(values, args.supernodes, args.log_dir, timeout_s=args.timeout_s)
    except ReferenceRunError as exc:
        print(f"run_reference: {exc}", file=sys.stderr)
        return 1
    print(status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
