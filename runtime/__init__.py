"""The run-time helpers that train.py puts together (lightning-hydra-template's ``src/utils``): checks before
any work, the job's parts, calibration, run folders, checkpoints, files written whole, one-line errors."""
