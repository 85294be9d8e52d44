#!/usr/bin/env bash
# Issue 21 item 3: ALGD (cpu preset) beside OmniSafe's SACLag on SafetyPointButton1-v0,
# 2 seeds, both held to the same limit and scored by one evaluator. Resumable: run it
# again and finished trials are skipped. BENCHMARKS.md records what it printed.
#   scripts/button-sweep.sh [OUT] [STEPS]        (default runs/button-sweep, 50000)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/button-sweep}
STEPS=${2:-50000}
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-77}
test -x .venv-omnisafe/bin/python || scripts/baseline-venv.sh
# Two trials at a time, one core each; nice, so that other work on the machine goes first.
nice -n 10 .venv/bin/algd-sweep --task SafetyPointButton1-v0 --preset cpu --seeds 1 2 \
  --baseline saclag --steps "$STEPS" --num-cpus 2 --out "$OUT" --progress-every 300
