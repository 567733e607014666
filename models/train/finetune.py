"""Second training stage: refine the CLIP towers against every caption at once, then retrain the
Q-Former on the refined image tower.

    python models/train/finetune.py --ckpt models/train/.ckpt/model.pt --out models/train/.ckpt/model_ft.pt

Stage 1 (train.py) contrasts each image with one random caption per digit. Here each step embeds
all 20 templates x 2 forms x 10 digits (with random-token noise) and maximises, for each image,
the total probability of its digit's captions (a multi-positive InfoNCE). That pulls every phrasing
of a digit together, which is what makes unseen phrasings work, and sharpens the image tower.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import common as C
import train as T


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, default=Path(__file__).parent / ".ckpt" / "model.pt")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / ".ckpt" / "model_ft.pt")
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--qformer-steps", type=int, default=600)
    ap.add_argument("--clean-fraction", type=float, default=0.4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    logf = open(args.out.with_suffix(".log.jsonl"), "w")

    def log(msg):
        print(json.dumps(msg), flush=True)
        logf.write(json.dumps(msg) + "\n")
        logf.flush()

    ck = torch.load(args.ckpt, map_location="cpu")
    vision, text = C.VisionTower(), C.TextTower()
    vision.load_state_dict(ck["vision"])
    text.load_state_dict(ck["text"])
    tok = C.clip_tokenizer()
    xtr, ytr, xte, yte = C.load_mnist()
    captions = T.build_caption_table(tok)  # [T2, 10, CONTEXT]
    flat = captions.reshape(-1, C.CONTEXT)
    cls_of = torch.arange(10).repeat(captions.shape[0])  # class of each flattened caption
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(ck["clip_scale"])))
    params = list(vision.parameters()) + list(text.parameters()) + [logit_scale]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    g = torch.Generator().manual_seed(args.seed)
    pos_mask = F.one_hot(cls_of, 10).bool()  # [Ncap, 10]
    t0 = time.time()
    vision.train(); text.train()
    for step in range(args.steps):
        lr = T.cosine_lr(step, args.steps, args.lr, 50)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(xtr), (args.batch,), generator=g)
        x = torch.from_numpy(xtr[idx.numpy()])
        y = torch.from_numpy(ytr[idx.numpy()])
        n_clean = int(args.batch * args.clean_fraction)
        img = torch.cat([C.augment(x[:n_clean], g, strength=0.35), C.augment(x[n_clean:], g)])
        emb = C.l2n(vision(C.normalise(img))[0])
        # half of the caption variants each step (all ten digits of each chosen variant)
        rows = torch.randperm(captions.shape[0], generator=g)[: captions.shape[0] // 2]
        sel = (rows[:, None] * 10 + torch.arange(10)[None, :]).reshape(-1)
        t = C.l2n(text(T.token_noise(flat[sel], g, p=0.3)))
        logits = logit_scale.exp().clamp(max=100) * emb @ t.T  # [B, Nsel]
        logp = F.log_softmax(logits, dim=1)
        # log of the total probability of the image's digit captions
        pos = pos_mask[sel][:, y].T  # [B, Nsel]
        loss = -(torch.logsumexp(logp.masked_fill(~pos, float("-inf")), dim=1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            msg = {"stage": "finetune", "step": step, "loss": round(float(loss), 4), "scale": round(float(logit_scale.exp()), 2), "s": round(time.time() - t0, 1)}
            if step % 250 == 0 or step == args.steps - 1:
                vision.eval(); text.eval()
                msg["acc_clean"] = T.evaluate(vision, text, None, tok, xte, yte)["clip"]
                msg["acc_camera"] = T.evaluate(vision, text, None, tok, xte, yte, camera=True)["clip"]
                vision.train(); text.train()
            log(msg)
    clip_scale = float(logit_scale.exp().clamp(max=100))
    qargs = argparse.Namespace(**vars(args))
    qargs.lr = 1e-3
    qf, qf_scale = T.train_qformer(qargs, tok, vision, text, xtr, ytr, xte, yte, log)
    torch.save({"vision": vision.state_dict(), "text": text.state_dict(), "clip_scale": clip_scale, "qformer": qf.state_dict(), "qformer_scale": qf_scale, "args": {k: str(v) for k, v in vars(args).items()}}, args.out)
    log({"done": True, "final": T.evaluate(vision, text, qf, tok, xte, yte, n=10000)})


if __name__ == "__main__":
    main()
