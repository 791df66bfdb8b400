"""Data parallelism: 2 CPU processes (gloo) with batch B train the same model as one process with batch 2B,
batch statistics (variance, decorrelation, unit statistics) included."""
import math

import pytest
import torch

from conftest import measured, run_cli

DOUBLED_BATCH = ["data.batch_size=128", "data.eval_batch_size=1024"]  # one process
HALF_BATCH = ["data.batch_size=64", "data.eval_batch_size=512"]  # each of 2 ranks
COMMON = ["data=gaussian_mixture", "data.n_train=2048", "trainer.max_epochs=2", "logger=csv",
          "callbacks.unit_metrics.figures=false", "trainer.log_every_n_steps=4"]


@pytest.mark.parametrize("model", [["model=encoder", "loss=lse_var_tc"], ["model=sae", "loss=mse_l1"]],
                         ids=["encoder", "sae"])
def test_two_ranks_train_as_one_process_with_the_doubled_batch(tmp_path, model):
    run_cli("train.py", *COMMON, *model, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *HALF_BATCH,
            f"hydra.run.dir={tmp_path / 'ddp'}")
    run_cli("train.py", *COMMON, *model, *DOUBLED_BATCH, f"hydra.run.dir={tmp_path / 'one'}")
    assert_same_training(tmp_path / "ddp", tmp_path / "one")


def assert_same_training(ranks, one, steps=32):
    """The same metrics.json and final weights, to float tolerance (the sums run in another order)."""
    ddp, single = measured(ranks), measured(one)
    assert set(ddp) == set(single) and ddp["global_step"] == single["global_step"] == steps
    assert {"train/total", "val/total", "redundancy", "dead_units"} <= set(single)
    for name, value in single.items():
        if isinstance(value, float):
            assert math.isclose(ddp[name], value, rel_tol=1e-5, abs_tol=1e-6), name
    weights = [torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for run in (ranks, one)]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-5, atol=1e-6)
