"""Executes the notebooks top to bottom against one `horizon demo` output directory.

    python notebooks/execute.py --demo-out out/demo --in-place     # regenerate the committed outputs
    python notebooks/execute.py --demo-out DIR --to OUTDIR          # check them, leaving notebooks/ as is

Each notebook runs in a fresh kernel with notebooks/ as its working directory and HORIZON_OUT set to the
demo output directory; a cell that raises fails the run (non-zero exit, the notebook and cell named).
"""

import argparse
import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ["information_maps.ipynb", "tasks_and_models.ipynb", "pruning.ipynb"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo-out", required=True, help="output directory of `horizon demo`")
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--in-place", action="store_true", help="write the outputs into notebooks/")
    where.add_argument("--to", type=Path, help="write the executed notebooks into this directory")
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()

    demo = Path(args.demo_out)
    if not (demo / "analysis" / "horizon.json").is_file():
        print(f"{demo}: no analysis/horizon.json (run `horizon demo --out {demo}` first)", file=sys.stderr)
        return 2
    # Relative to notebooks/, where the kernels run; kept relative when given so, so that the committed
    # notebooks name no machine's paths.
    os.environ["HORIZON_OUT"] = os.path.relpath(demo.resolve(), HERE)
    if args.to:
        args.to.mkdir(parents=True, exist_ok=True)
    for name in NOTEBOOKS:
        nb = nbformat.read(HERE / name, as_version=4)
        client = NotebookClient(
            nb, timeout=args.timeout, kernel_name="python3", record_timing=False,
            resources={"metadata": {"path": str(HERE)}},
        )
        try:
            client.execute()
        except CellExecutionError as e:
            print(f"{name}: a cell failed\n{e}", file=sys.stderr)
            return 1
        target = HERE / name if args.in_place else args.to / name
        nbformat.write(nb, target)
        print(f"executed {name} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
