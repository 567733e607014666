"""Train the edgefuse default model (CLIP image + text towers, then a Q-Former) on MNIST, on the CPU.

    python models/train/train.py --out models/train/.ckpt        # ~30 min on 2 cores

Deterministic for a given seed and thread count (torch.manual_seed + explicit generators).
The checkpoint is turned into the shipped bundle by ``export_bundle.py``.
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


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * p))


def token_noise(ids: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Insert one random vocabulary token into a fraction p of the captions (before EOT, when there
    is room) so the text tower learns to ignore words it has never seen: held-out phrasings."""
    ids = ids.clone()
    for i in range(ids.shape[0]):
        if torch.rand(1, generator=g).item() >= p:
            continue
        n = int((ids[i] != 0).sum())
        if n >= C.CONTEXT:
            continue
        pos = 1 + int(torch.randint(0, n - 1, (1,), generator=g))
        rnd = int(torch.randint(300, 49000, (1,), generator=g))
        ids[i, pos + 1 : n + 1] = ids[i, pos:n].clone()
        ids[i, pos] = rnd
    return ids


def build_caption_table(tok):
    """All training captions: [templates, 2 forms, 10 digits] token ids."""
    rows = []
    for t in C.TRAIN_TEMPLATES:
        for numeral in (False, True):
            rows.append(C.tokenize(tok, [C.caption(t, d, numeral) for d in range(10)]))
    return torch.stack(rows)  # [T*2, 10, CONTEXT]


@torch.no_grad()
def heldout_text(text, tok):
    embs = []
    for t in C.HELDOUT_TEMPLATES:
        embs.append(C.l2n(text(C.tokenize(tok, [C.caption(t, d, False) for d in range(10)]))))
    return C.l2n(torch.stack(embs).mean(0))


@torch.no_grad()
def evaluate(vision, text, qformer, tok, xte, yte, n=2000, camera=False):
    g = torch.Generator().manual_seed(1234)
    x = torch.from_numpy(xte[:n])
    img = C.augment(x, g) if camera else C.clean(x)
    emb, tokens = vision(C.normalise(img))
    t = heldout_text(text, tok)
    acc = {"clip": float((C.l2n(emb) @ t.T).argmax(1).eq(torch.from_numpy(yte[:n])).float().mean())}
    if qformer is not None:
        q = C.l2n(qformer(tokens))
        s = torch.einsum("bqd,cd->bqc", q, t).max(1).values
        acc["qformer"] = float(s.argmax(1).eq(torch.from_numpy(yte[:n])).float().mean())
    return acc


def train_clip(args, tok, xtr, ytr, xte, yte, log):
    vision, text = C.VisionTower(), C.TextTower()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(vision.parameters()) + list(text.parameters()) + [logit_scale]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    captions = build_caption_table(tok)
    g = torch.Generator().manual_seed(args.seed)
    steps = args.clip_steps
    t0 = time.time()
    for step in range(steps):
        lr = cosine_lr(step, steps, args.lr, 200)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(xtr), (args.batch,), generator=g)
        x = torch.from_numpy(xtr[idx.numpy()])
        y = torch.from_numpy(ytr[idx.numpy()])
        n_clean = int(args.batch * args.clean_fraction)
        img = torch.cat([C.augment(x[:n_clean], g, strength=0.35), C.augment(x[n_clean:], g)])
        emb, _ = vision(C.normalise(img))
        emb = C.l2n(emb)
        # two caption views per step: for each view and digit one random template and form
        loss = 0.0
        for _ in range(2):
            pick = torch.randint(0, captions.shape[0], (10,), generator=g)
            ids = token_noise(captions[pick, torch.arange(10)], g, p=0.3)
            t = C.l2n(text(ids))
            logits = logit_scale.exp().clamp(max=100) * emb @ t.T
            # image -> text over the 10 distinct captions, and text -> image over the images of the batch
            # (every image of the caption's digit is a positive: soft targets).
            pos = F.one_hot(y, 10).float()
            loss = loss + F.cross_entropy(logits, y)
            tgt = pos.T / pos.T.sum(1, keepdim=True).clamp_min(1)
            loss = loss + 0.5 * -(tgt * F.log_softmax(logits.T, dim=1)).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            msg = {"stage": "clip", "step": step, "loss": round(float(loss), 4), "lr": round(lr, 6), "scale": round(float(logit_scale.exp()), 2), "s": round(time.time() - t0, 1)}
            if step % 500 == 0 or step == steps - 1:
                vision.eval(); text.eval()
                msg["acc_clean"] = evaluate(vision, text, None, tok, xte, yte)["clip"]
                msg["acc_camera"] = evaluate(vision, text, None, tok, xte, yte, camera=True)["clip"]
                vision.train(); text.train()
            log(msg)
    return vision, text, float(logit_scale.exp().clamp(max=100))


def train_qformer(args, tok, vision, text, xtr, ytr, xte, yte, log):
    vision.eval(); text.eval()
    for p in list(vision.parameters()) + list(text.parameters()):
        p.requires_grad_(False)
    with torch.no_grad():
        captions = build_caption_table(tok)
        table = C.l2n(text(captions.reshape(-1, C.CONTEXT))).reshape(captions.shape[0], 10, -1)
    qf = C.QFormer()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(qf.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    g = torch.Generator().manual_seed(args.seed + 1)
    steps = args.qformer_steps
    t0 = time.time()
    for step in range(steps):
        lr = cosine_lr(step, steps, args.lr, 100)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(xtr), (args.batch,), generator=g)
        x = torch.from_numpy(xtr[idx.numpy()])
        y = torch.from_numpy(ytr[idx.numpy()])
        n_clean = int(args.batch * args.clean_fraction)
        with torch.no_grad():
            img = torch.cat([C.augment(x[:n_clean], g, strength=0.35), C.augment(x[n_clean:], g)])
            _, tokens = vision(C.normalise(img))
        q = C.l2n(qf(tokens))  # [B,Q,D]
        pick = torch.randint(0, table.shape[0], (10,), generator=g)
        t = table[pick, torch.arange(10)]  # [10,D]
        sim = torch.einsum("bqd,cd->bqc", q, t).max(1).values  # max over queries (BLIP-2 ITC)
        logits = logit_scale.exp().clamp(max=100) * sim
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            msg = {"stage": "qformer", "step": step, "loss": round(float(loss), 4), "scale": round(float(logit_scale.exp()), 2), "s": round(time.time() - t0, 1)}
            if step % 500 == 0 or step == steps - 1:
                qf.eval()
                msg["acc_clean"] = evaluate(vision, text, qf, tok, xte, yte)["qformer"]
                msg["acc_camera"] = evaluate(vision, text, qf, tok, xte, yte, camera=True)["qformer"]
                qf.train()
            log(msg)
    return qf, float(logit_scale.exp().clamp(max=100))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / ".ckpt")
    ap.add_argument("--seed", type=int, default=20261129)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--clip-steps", type=int, default=1800)
    ap.add_argument("--qformer-steps", type=int, default=700)
    ap.add_argument("--clean-fraction", type=float, default=0.35)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    logf = open(args.out / "train_log.jsonl", "w")

    def log(msg):
        print(json.dumps(msg), flush=True)
        logf.write(json.dumps(msg) + "\n")
        logf.flush()

    tok = C.clip_tokenizer()
    xtr, ytr, xte, yte = C.load_mnist()
    vision, text, clip_scale = train_clip(args, tok, xtr, ytr, xte, yte, log)
    torch.save({"vision": vision.state_dict(), "text": text.state_dict(), "clip_scale": clip_scale}, args.out / "clip.pt")
    qf, qf_scale = train_qformer(args, tok, vision, text, xtr, ytr, xte, yte, log)
    torch.save({"vision": vision.state_dict(), "text": text.state_dict(), "clip_scale": clip_scale, "qformer": qf.state_dict(), "qformer_scale": qf_scale, "args": {k: str(v) for k, v in vars(args).items()}}, args.out / "model.pt")
    log({"done": True, "final": evaluate(vision, text, qf, tok, xte, yte, n=10000)})


if __name__ == "__main__":
    main()
