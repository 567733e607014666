"""Export a BLIP-2 Q-Former (Hugging Face transformers weights you have on disk) to ONNX for edgefuse.

    # your own weights: a local folder holding a Blip2ForImageTextRetrieval checkpoint
    python models/export/export_blip2_qformer.py --checkpoint ~/models/blip2-itm-vit-g --tokens 257 --out q/

    # the real BLIP-2 size with random weights (32 queries, 12 layers, width 768, cross-attention
    # every other layer, image features 1408 wide): no download; for tests and benchmarks
    python models/export/export_blip2_qformer.py --random-init --tokens 257 --out /tmp/blip2-qformer

    # add it to a bundle whose image tower emits tokens of the Q-Former's width and whose label
    # embeddings live in the Q-Former's projection space
    python models/export/export_blip2_qformer.py --checkpoint ... --into bundles/mine

Writes qformer.onnx: input `tokens` [1, T, encoder_hidden_size] → output `query_embeddings`
[1, queries, image_text_hidden_size] (the ITC projection of every query). The export is checked
against PyTorch with onnxruntime (max abs diff printed; fails above --tolerance).
Needs: torch, transformers, onnx, onnxruntime, numpy. Nothing is downloaded: --checkpoint is read
with local_files_only.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import numpy as np


def fail(msg: str) -> None:
    sys.exit(f"export_blip2_qformer: {msg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="local folder of a Blip2ForImageTextRetrieval model")
    src.add_argument("--random-init", action="store_true", help="BLIP-2-size Q-Former with random weights")
    ap.add_argument("--encoder-width", type=int, default=1408, help="image token width for --random-init")
    ap.add_argument("--proj-dim", type=int, default=256, help="ITC projection width for --random-init")
    ap.add_argument("--tokens", type=int, default=257, help="image tokens per frame (257 for EVA ViT-g 224)")
    dst = ap.add_mutually_exclusive_group(required=True)
    dst.add_argument("--out", type=Path, help="folder for qformer.onnx")
    dst.add_argument("--into", type=Path, help="an edgefuse bundle to add the Q-Former to")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    args = ap.parse_args()
    try:
        import torch
        from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2QFormerConfig
    except ImportError as e:
        fail(f"{e}; install torch and transformers")

    if args.random_init:
        qcfg = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                  intermediate_size=3072, cross_attention_frequency=2,
                                  encoder_hidden_size=args.encoder_width)
        # Blip2Config sets the Q-Former's encoder width from the vision config.
        cfg = Blip2Config(vision_config={"hidden_size": args.encoder_width}, qformer_config=qcfg.to_dict(),
                          num_query_tokens=32, image_text_hidden_size=args.proj_dim)
        torch.manual_seed(0)
        model = Blip2ForImageTextRetrieval(cfg)
    else:
        if not (args.checkpoint / "config.json").is_file():
            fail(f"{args.checkpoint}: no config.json; give the folder of a Hugging Face BLIP-2 checkpoint you have on disk")
        try:
            model = Blip2ForImageTextRetrieval.from_pretrained(str(args.checkpoint), local_files_only=True)
        except Exception as e:  # transformers raises several types for bad folders
            fail(f"cannot load a Blip2ForImageTextRetrieval model from {args.checkpoint}: {e}")
    model.eval()
    width = model.config.qformer_config.encoder_hidden_size

    class QFormer(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.qformer = m.qformer
            self.query_tokens = m.query_tokens
            self.proj = m.vision_projection

        def forward(self, tokens):
            q = self.query_tokens.expand(tokens.shape[0], -1, -1)
            mask = torch.ones(tokens.shape[:-1], dtype=torch.long)
            out = self.qformer(query_embeds=q, encoder_hidden_states=tokens, encoder_attention_mask=mask)
            return self.proj(out[0])

    proj = model.config.image_text_hidden_size
    if args.into:
        manifest = args.into / "bundle.toml"
        if not manifest.is_file():
            fail(f"{manifest}: not an edgefuse bundle")
        text = manifest.read_text()
        dim = re.search(r"^embedding_dim = (\d+)", text, re.M)
        if dim is None or int(dim.group(1)) != proj:
            fail(f"{manifest}: embedding_dim is {dim.group(1) if dim else '?'} but the Q-Former projects to "
                 f"{proj}; both heads share the label embeddings, so they must live in one space")
        if "[qformer]" in text:
            fail(f"{manifest}: already has a [qformer] section")

    wrapper = QFormer(model).eval()
    x = torch.randn(1, args.tokens, width)
    with torch.no_grad():
        ref = wrapper(x)
    folder = args.out or args.into
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "qformer.onnx"
    torch.backends.mha.set_fastpath_enabled(False)
    torch.onnx.export(wrapper, (x,), str(path), input_names=["tokens"], output_names=["query_embeddings"],
                      opset_version=17, dynamo=False)
    import onnxruntime as ort

    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"tokens": x.numpy()})[0]
    diff = float(np.abs(out - ref.numpy()).max())
    print(f"qformer: {tuple(out.shape)}, max abs diff onnxruntime vs PyTorch {diff:.2e}")
    if diff > args.tolerance:
        fail(f"export differs from PyTorch by {diff}")

    if args.into:
        manifest = args.into / "bundle.toml"
        text = manifest.read_text()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        section = (f'\n[qformer]\nfile = "qformer.onnx"\nsha256 = "{digest}"\ninput = "tokens"\n'
                   f'output = "query_embeddings"\nqueries = {out.shape[1]}\n')
        temp = float(getattr(model, "temp", torch.tensor(0.07)))  # BLIP-2's learned ITC temperature
        head = f"\n[fusion.qformer]\nlogit_scale = {1.0 / temp:.4f}\nweight = 0.5\n"
        first_label = text.find("[[labels]]")
        text = text[:first_label] + section.lstrip("\n") + head.lstrip("\n") + "\n" + text[first_label:]
        manifest.write_text(text)
        print(f"added the Q-Former to {manifest}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
