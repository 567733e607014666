"""Measure the bundle's zero-shot accuracy through the Rust runtime (`edgefuse run --json`).

    python models/train/eval_runtime.py [--edgefuse target/release/edgefuse] [--model models/default]

Runs on the evaluation sets written by export_bundle.py under models/train/.eval/: the full 10k
MNIST test split, the synthetic camera set (1000 frames, 640x480) and scikit-learn's 8x8 digits.
Reports top-1 of the CLIP head, the Q-Former head and the fused result for each set.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import common as C

EVAL = Path(__file__).parent / ".eval"


def run_set(edgefuse: Path, model: Path, folder: Path) -> dict:
    truth = {}
    with open(folder / "labels.csv") as f:
        for row in csv.DictReader(f):
            truth[row["file"]] = row["label"]
    cmd = [str(edgefuse), "run", "--model", str(model), "--source", f"file://{folder}", "--json", "--top-k", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    n = clip = qf = fused = 0
    for line in out.stdout.splitlines():
        r = json.loads(line)
        want = truth[Path(r["source"]).name]
        n += 1
        fused += r["top"][0][0] == want
        clip += r["heads"]["clip"] == want
        qf += r["heads"]["qformer"] == want
    if n != len(truth):
        sys.exit(f"{folder}: {n} results for {len(truth)} images")
    return {"images": n, "clip": clip / n, "qformer": qf / n, "fused": fused / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = C.repo_root()
    ap.add_argument("--edgefuse", type=Path, default=root / "target" / "release" / "edgefuse")
    ap.add_argument("--model", type=Path, default=root / "models" / "default")
    ap.add_argument("--sets", nargs="+", default=["mnist", "camera", "sklearn"])
    args = ap.parse_args()
    if not args.edgefuse.exists():
        subprocess.run(["cargo", "build", "--release", "-p", "edgefuse-runtime"], cwd=root, check=True)
    out = EVAL / "results.json"
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in args.sets:
        folder = EVAL / name
        if not (folder / "labels.csv").exists():
            sys.exit(f"{folder} is missing: run export_bundle.py first")
        results[name] = run_set(args.edgefuse, args.model, folder)
        r = results[name]
        print(f"{name:8s} {r['images']:6d} images  CLIP {r['clip']:.2%}  Q-Former {r['qformer']:.2%}  fused {r['fused']:.2%}")
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
