"""Export an open_clip ViT model you have on disk into an edgefuse bundle.

    # your own weights (a checkpoint file you downloaded or trained; nothing is fetched here)
    python models/export/export_open_clip.py --model ViT-B-32 --checkpoint ~/clip/ViT-B-32.pt \
        --label cat "a photo of a cat" --label dog "a photo of a dog" --out bundles/vitb32

    # the real architecture with random weights (tests the export path, benchmarks real sizes)
    python models/export/export_open_clip.py --model ViT-B-32 --random-init --out /tmp/vitb32-random

Writes image_encoder.onnx (pooled embedding + token sequence), text_encoder.onnx (unless
--no-text-encoder), text_embeddings.bin, bundle.toml with sha256 of every file. Each ONNX export is
checked against PyTorch with onnxruntime (max abs diff printed; fails above --tolerance).
Needs: torch, open-clip-torch, torchvision, onnx, onnxruntime, numpy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def fail(msg: str) -> None:
    sys.exit(f"export_open_clip: {msg}")


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="open_clip architecture name, e.g. ViT-B-32")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="your weights file (.pt, .bin or .safetensors)")
    src.add_argument("--random-init", action="store_true", help="random weights (no download)")
    ap.add_argument("--label", nargs="+", action="append", metavar=("NAME", "PROMPT"), default=[],
                    help="a label and one or more prompts; repeatable")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-text-encoder", action="store_true", help="leave the text tower out of the bundle")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()

    try:
        import open_clip
        import torch
    except ImportError as e:
        fail(f"{e}; install torch, torchvision and open-clip-torch")

    if args.model not in open_clip.list_models():
        vits = [m for m in open_clip.list_models() if m.startswith("ViT-")]
        fail(f"unknown architecture `{args.model}`; open_clip ViT models: {', '.join(vits)}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        fail(f"{args.checkpoint}: no such checkpoint file; give the path of weights you have on disk")
    labels = args.label or [["photo", "a photo"], ["drawing", "a drawing"]]
    for lab in labels:
        if len(lab) < 2:
            fail(f"--label {lab[0]}: give at least one prompt after the name")

    torch.backends.mha.set_fastpath_enabled(False)
    pretrained = None if args.random_init else str(args.checkpoint)
    try:
        model = open_clip.create_model(args.model, pretrained=pretrained)
    except Exception as e:  # open_clip raises several types for bad checkpoints
        fail(f"cannot load {args.model} from {pretrained}: {e}")
    model.eval()
    visual = model.visual
    if not hasattr(visual, "output_tokens"):
        fail(f"`{args.model}` is not a ViT image tower (no token output); only ViT models are supported")
    visual.output_tokens = True
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", visual.image_size)
    size = size if isinstance(size, (tuple, list)) else (size, size)
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    args.out.mkdir(parents=True, exist_ok=True)

    import onnxruntime as ort

    def check(path, feeds, ref, name):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs = sess.run(None, feeds)
        worst = max(float(np.abs(o - r.detach().numpy()).max()) for o, r in zip(outs, ref))
        print(f"{name}: max abs diff onnxruntime vs PyTorch {worst:.2e}")
        if worst > args.tolerance:
            fail(f"{name}: export differs from PyTorch by {worst}")

    class Image(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def forward(self, image):
            pooled, tokens = self.v(image)
            return pooled, tokens

    x = torch.randn(1, 3, size[1], size[0])
    with torch.no_grad():
        ref = Image(visual)(x)
    img_path = args.out / "image_encoder.onnx"
    torch.onnx.export(Image(visual), (x,), str(img_path), input_names=["image"], output_names=["embedding", "tokens"],
                      opset_version=17, dynamo=False)
    check(img_path, {"image": x.numpy()}, ref, "image_encoder")
    dim = int(ref[0].shape[-1])

    tokenizer = open_clip.get_tokenizer(args.model)
    with torch.no_grad():
        rows = []
        for name, *prompts in labels:
            e = model.encode_text(tokenizer(prompts))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            rows.append((m / m.norm()).numpy())
    (args.out / "text_embeddings.bin").write_bytes(np.stack(rows).astype("<f4").tobytes())

    context = int(tokenizer(["x"]).shape[1])
    text_section = []
    if not args.no_text_encoder:
        class Text(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, tokens):
                return self.m.encode_text(tokens)

        ids = tokenizer(["a photo of a cat"])
        with torch.no_grad():
            tref = Text(model)(ids)
        txt_path = args.out / "text_encoder.onnx"
        torch.onnx.export(Text(model), (ids,), str(txt_path), input_names=["tokens"], output_names=["embedding"],
                          opset_version=17, dynamo=False)
        check(txt_path, {"tokens": ids.numpy()}, [tref], "text_encoder")
        text_section = ["[text_encoder]", 'file = "text_encoder.onnx"', f'sha256 = "{sha256(txt_path)}"',
                        'input = "tokens"', 'output = "embedding"', f"context_length = {context}",
                        'tokenizer = "clip-bpe"', ""]

    resize = "shortest_side_center_crop" if cfg.get("resize_mode", "shortest") == "shortest" else "stretch"
    lines = [
        "# written by models/export/export_open_clip.py",
        "format_version = 1",
        f'name = "open_clip-{args.model}"',
        'version = "1"',
        f'description = "open_clip {args.model} ({"random weights" if args.random_init else args.checkpoint.name})"',
        "",
        "[preprocess]",
        f"image_size = [{size[0]}, {size[1]}]",
        f'resize = "{resize}"',
        f"mean = [{', '.join(repr(float(v)) for v in mean)}]",
        f"std = [{', '.join(repr(float(v)) for v in std)}]",
        'channel_order = "rgb"',
        "",
        "[encoder]",
        'file = "image_encoder.onnx"',
        f'sha256 = "{sha256(img_path)}"',
        'input = "image"',
        'embedding_output = "embedding"',
        'tokens_output = "tokens"',
        f"embedding_dim = {dim}",
        "",
        *text_section,
        "[text_embeddings]",
        'file = "text_embeddings.bin"',
        f'sha256 = "{sha256(args.out / "text_embeddings.bin")}"',
        "",
        "[fusion]",
        'method = "weighted_logits"',
        "",
        "[fusion.clip]",
        f"logit_scale = {float(model.logit_scale.exp()):.4f}",
        "weight = 1.0",
        "",
    ]
    for name, *prompts in labels:
        lines += ["[[labels]]", f"name = {json.dumps(name)}", "prompts = [" + ", ".join(json.dumps(p) for p in prompts) + "]", ""]
    (args.out / "bundle.toml").write_text("\n".join(lines))
    print(f"bundle written to {args.out}")


if __name__ == "__main__":
    main()
