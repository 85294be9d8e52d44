#!/usr/bin/env bash
# The baseline's own environment: OmniSafe 0.5.0 (SACLag) beside, never inside, ours.
# Same Python, the same CPU torch 2.13.0 and the same Safety-Gymnasium 1.0.0 as `make
# install`, so that both learners see the same simulator; run it with baseline/saclag.py.
#   scripts/baseline-venv.sh [VENV]        (default .venv-omnisafe)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${1:-.venv-omnisafe}
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c constraints.txt)
"$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
# torch first and pinned: nothing later may pull a CUDA build.
"${PIP[@]}" torch==2.13.0
# Safety-Gymnasium's own pins (pygame 2.1.0) have no Python 3.11 wheel: its runtime
# dependencies by hand, then the package without its metadata's pins (as `make install`).
"${PIP[@]}" gymnasium==0.28.1 gymnasium-robotics mujoco==2.3.3 numpy xmltodict pyyaml imageio
"${PIP[@]}" --no-deps safety-gymnasium==1.0.0
# OmniSafe without its pins on safety-gymnasium, then the dependencies it needs to train
# and log (wandb is imported at start; it stays offline).
"$VENV/bin/python" -m pip install -q --no-deps omnisafe==0.5.0
"${PIP[@]}" tensorboard wandb pandas==2.0.3 matplotlib seaborn typer rich moviepy gdown typing-extensions
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "baseline environment ready: $VENV (run: $VENV/bin/python baseline/saclag.py --help)"
