"""Labelled frame folders for measuring fusion and few-shot adaptation (docs/FUSION.md) without the
full MNIST download: written under models/train/.eval/ (not committed).

    pip install numpy pillow scikit-learn
    python3 models/train/fusion_sets.py

  .eval/sklearn-digits/   scikit-learn's 8x8 digits (1797, another writer population): ink 0..16
                          scaled to 0..255, a 2-pixel border, upscaled bilinearly to 48x48 PNG
  .eval/camera-samples/   600 synthetic 640x480 camera frames (JPEG): each of the 300 bundled MNIST
                          sample digits (models/samples/mnist) drawn twice on paper by the same
                          renderer as the bundled camera sequence (export_bundle.paper_frame)

Each folder has a labels.csv. File names sort in a fixed order, so `edgefuse fit --per-label N`
and `edgefuse eval --skip-per-label N` split every label the same way; in camera-samples both
renders of a digit are adjacent, so fitting and measured frames never share a digit image.
"""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
EVAL = HERE / ".eval"


def load_paper_frame():
    """export_bundle.paper_frame without importing export_bundle (which needs torch)."""
    tree = ast.parse((HERE / "export_bundle.py").read_text())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "paper_frame"]
    ns = {"np": np, "Image": Image}
    exec(compile(ast.Module(body=fn, type_ignores=[]), "export_bundle.py", "exec"), ns)
    return ns["paper_frame"]


def write_labels(d: Path, rows):
    with open(d / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "label"])
        w.writerows(rows)


def sklearn_digits():
    from sklearn.datasets import load_digits

    d = EVAL / "sklearn-digits"
    d.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rows = []
    for i, (img, y) in enumerate(zip(digits.images, digits.target)):
        a = np.pad(np.round(img * (255.0 / 16.0)).astype(np.uint8), 2)
        name = f"s{i:04d}.png"
        Image.fromarray(a).resize((48, 48), Image.BILINEAR).save(d / name)
        rows.append([name, int(y)])
    write_labels(d, rows)
    print(f"{d}: {len(rows)} frames")


def camera_samples():
    paper_frame = load_paper_frame()
    src = ROOT / "models" / "samples" / "mnist"
    truth = dict(csv.reader(open(src / "labels.csv")))
    d = EVAL / "camera-samples"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    names = sorted(n for n in truth if n.endswith(".png"))
    for i, n in enumerate(names):
        digit = np.asarray(Image.open(src / n).convert("L"))
        for r in range(2):
            rng = np.random.default_rng(70_000 + 2 * i + r)
            name = f"c{2 * i + r:04d}.jpg"
            Image.fromarray(paper_frame(digit, rng)).save(d / name, quality=90)
            rows.append([name, truth[n]])
    write_labels(d, rows)
    print(f"{d}: {len(rows)} frames")


if __name__ == "__main__":
    sklearn_digits()
    camera_samples()
