#!/usr/bin/env bash
# On a CUDA machine, after the README's set-up: the paper-width SAE step (4096 -> 65,536, batch 4096) in fp32,
# TF32 and bf16, dense and sparse, and SmolLM2's forward pass, beside analysis/paper_scale.py's arithmetic.
# About 3 minutes on an H100; the timeout keeps it under 8.
set -euo pipefail
cd "$(dirname "$0")/.."
timeout 450 .venv/bin/python -m benchmarks.gpu_check "$@"
