#!/usr/bin/env bash
# Create .venv (if missing) and install species-classifier with its test dependencies.
# Set PYTHON to choose the interpreter (default: python3). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "Creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip

# Pinned torch/torchvision pair (x86_64 Linux wheels; a CPU-only machine elsewhere can
# install from https://download.pytorch.org/whl/cpu instead to save about 3 GB).
if ! python -c "import torch, torchvision" 2>/dev/null; then
    python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
fi
python -m pip install --quiet -e ".[dev]"

# Headless Chromium for the browser test of the web page (Debian/Ubuntu, as root only).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "Installing Debian's chromium for the browser test"
    apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null || echo "chromium install failed; the browser test will be skipped"
fi
echo "Environment ready: $(python -c 'import species_classifier, torch; print("species-classifier", species_classifier.__version__, "torch", torch.__version__)')"
