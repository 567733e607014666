#!/usr/bin/env python3
"""onnxruntime side of the int8 comparison (not run in CI; needs `pip install onnxruntime onnx
numpy pillow`).

For a float edgefuse bundle and a folder of calibration frames it builds, with onnxruntime:
f32 sessions, `quantize_static` models (QDQ, per-channel weights, the same frames as
`edgefuse calibrate`, each calibrator) and a `quantize_dynamic` model, for the image encoder and
the Q-Former; then measures median latency at 1 thread and all threads, and fidelity against f32
(embedding cosine, and top-1 agreement / accuracy against the bundle's labels when the frames
folder has a labels.csv). Prints one JSON object per line.

    python models/export/bench_onnxruntime.py --bundle models/default \
        --frames models/samples/mnist --calibrators MinMax Entropy Percentile
"""

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
import tomllib

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                      QuantType, quantize_dynamic, quantize_static)
from PIL import Image


def preprocess(path, pre):
    """CLIP preprocessing as edgefuse does it: shortest side to size (bicubic-free: bilinear with
    antialias), centre crop, mean/std, CHW."""
    w, h = pre["image_size"]
    img = Image.open(path).convert("RGB")
    if pre.get("resize", "shortest_side_center_crop") in ("shortest_side_center_crop", "ShortestSideCenterCrop"):
        s = max(w / img.width, h / img.height)
        nw, nh = max(w, round(img.width * s)), max(h, round(img.height * s))
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
        left, top = (nw - w) // 2, (nh - h) // 2
        img = img.crop((left, top, left + w, top + h))
    else:
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


class Reader(CalibrationDataReader):
    def __init__(self, name, arrays):
        self.it = iter([{name: a} for a in arrays])

    def get_next(self):
        return next(self.it, None)


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def median_ms(sess, feed, runs):
    for _ in range(3):
        sess.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        t.append((time.perf_counter() - t0) * 1000)
    return statistics.median(t)


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--frames", required=True, help="folder of calibration images")
    ap.add_argument("--max-frames", type=int, default=300)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--calibrators", nargs="+", default=["MinMax"], choices=["MinMax", "Entropy", "Percentile"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, os.cpu_count()])
    ap.add_argument("--keep", help="folder for the quantized models: reused when there, written when not")
    args = ap.parse_args()

    m = tomllib.load(open(os.path.join(args.bundle, "bundle.toml"), "rb"))
    pre = m["preprocess"]
    files = sorted(f for f in os.listdir(args.frames) if f.lower().endswith((".png", ".jpg", ".jpeg")))
    files = files[: args.max_frames]
    truth = {}
    if os.path.exists(os.path.join(args.frames, "labels.csv")):
        truth = {r["file"]: r["label"] for r in csv.DictReader(open(os.path.join(args.frames, "labels.csv")))}
    xs = [preprocess(os.path.join(args.frames, f), pre) for f in files]
    labels = [l["name"] for l in m["labels"]]
    dim = m["encoder"]["embedding_dim"]
    text = np.fromfile(os.path.join(args.bundle, m["text_embeddings"]["file"]), dtype="<f4").reshape(-1, dim)
    text /= np.linalg.norm(text, axis=1, keepdims=True)

    enc_path = os.path.join(args.bundle, m["encoder"]["file"])
    enc_in = m["encoder"]["input"]
    emb_out = m["encoder"]["embedding_output"]
    tok_out = m["encoder"].get("tokens_output")
    enc32 = session(enc_path, 1)
    out_names = [o.name for o in enc32.get_outputs()]
    f32 = [enc32.run(None, {enc_in: x}) for x in xs]
    emb32 = [o[out_names.index(emb_out)] for o in f32]
    toks = [o[out_names.index(tok_out)] for o in f32] if tok_out and "qformer" in m else []

    def top1(emb):
        e = emb.ravel() / np.linalg.norm(emb)
        return labels[int(np.argmax(text @ e))]

    def fidelity(sess):
        names = [o.name for o in sess.get_outputs()]
        cos, agree, right, right32, n_lab = [], 0, 0, 0, 0
        for f, x, e32 in zip(files, xs, emb32):
            e = sess.run(None, {enc_in: x})[names.index(emb_out)]
            cos.append(cosine(e, e32))
            agree += top1(e) == top1(e32)
            if truth.get(f) in labels:
                n_lab += 1
                right += top1(e) == truth[f]
                right32 += top1(e32) == truth[f]
        r = {"embedding_cosine_mean": float(np.mean(cos)), "embedding_cosine_min": float(np.min(cos)),
             "top1_agreement": agree / len(xs)}
        if n_lab:
            r.update({"accuracy_f32": right32 / n_lab, "accuracy": right / n_lab, "labelled": n_lab})
        return r

    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    tmp = args.keep or tempfile.mkdtemp(prefix="ortq-")
    models = {"encoder": (enc_path, enc_in, xs)}
    if toks:
        q = m["qformer"]
        models["qformer"] = (os.path.join(args.bundle, q["file"]), q["input"], toks)
    for name, (path, inp, data) in models.items():
        variants = {"ort-f32": path}
        dyn = os.path.join(tmp, f"{name}-dynamic.onnx")
        if not os.path.exists(dyn):
            quantize_dynamic(path, dyn + ".tmp", weight_type=QuantType.QInt8, per_channel=True)
            os.replace(dyn + ".tmp", dyn)
        variants["ort-int8-dynamic"] = dyn
        for c in args.calibrators:
            out = os.path.join(tmp, f"{name}-static-{c}.onnx")
            if os.path.exists(out):
                variants[f"ort-int8-static-{c}"] = out
                continue
            if os.path.exists(out + ".failed"):  # a calibrator that failed in an earlier round
                print(open(out + ".failed").read().strip(), flush=True)
                continue
            t0 = time.time()
            try:
                quantize_static(path, out + ".tmp", Reader(inp, data), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                                calibrate_method=getattr(CalibrationMethod, c),
                                extra_options={"ActivationSymmetric": True})
            except Exception as e:  # e.g. an attention mask's -inf defeats a calibrator
                line = json.dumps({"bundle": args.bundle, "model": name, "variant": f"ort-int8-static-{c}",
                                   "error": f"{type(e).__name__}: {e}"})
                print(line, flush=True)
                if args.keep:
                    open(out + ".failed", "w").write(line + "\n")
                continue
            os.replace(out + ".tmp", out)
            print(json.dumps({"model": name, "quantize_static": c, "seconds": round(time.time() - t0, 1)}),
                  file=sys.stderr)
            variants[f"ort-int8-static-{c}"] = out
        for v, p in variants.items():
            row = {"bundle": args.bundle, "model": name, "variant": v}
            for th in args.threads:
                row[f"p50_ms_{th}t"] = round(median_ms(session(p, th), {inp: data[0]}, args.runs), 3)
            if name == "encoder":
                row.update(fidelity(session(p, 1)))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
