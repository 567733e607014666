#!/usr/bin/env bash
# Reproduce the bundled default model from scratch, on the CPU (about 1.5 hours on 2 cores):
#   models/train/train_all.sh
# Needs the Python packages of requirements.txt (in a venv). Fixed seeds throughout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
./fetch_data.sh
python train.py --out .ckpt --qformer-steps 0          # stage 1: CLIP towers, contrastive
python finetune.py --ckpt .ckpt/clip.pt --out .ckpt/model_ft.pt   # stage 2: all-caption refinement + Q-Former
python export_bundle.py --ckpt .ckpt/model_ft.pt        # ONNX exports (checked), bundle, samples, fixtures
python train_itm.py                                     # the image-text-matching re-ranker on the exported bundle ([rerank])
python eval_runtime.py                                  # accuracy measured through the edgefuse binary
