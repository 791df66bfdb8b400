"""docs/extending.md's recipes for a new loss term and a new SAE architecture, followed with toy code kept
outside the project (a module on PYTHONPATH and configs in --config-dir) and trained through train.py."""
from conftest import QUICK, read_metrics, run_cli

TOY_MODULE = '''
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.losses import register
from lightning_modules.outputs import Code
from lightning_modules.sae import SparseAutoencoder


@register("l2_code", sparsity=True)
def l2_code(out: Code) -> Tensor:
    """The squared code, summed over latents: one value per example."""
    return out.a.square().sum(dim=-1)


class ShrinkSAE(SparseAutoencoder):
    """A ReLU SAE whose pre-activations are shrunk by a fixed margin before the ReLU."""

    def __init__(self, *args, margin: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        self.margin = margin

    def activate(self, z: Tensor) -> Tensor:
        return F.relu(z - self.margin)
'''

MODEL = """defaults:
  - override /loss@_global_.loss: mse_l2

_target_: toy_extension.ShrinkSAE
input_dim: ${data.input_dim}
hidden_dim: 16
margin: 0.5
"""

LOSS = """_target_: lightning_modules.losses.CompositeLoss
weights:
  mse: 1.0
  l2_code: 0.1
reduction: mean
"""


def test_a_new_loss_term_and_architecture_train_through_train_py(tmp_path):
    (tmp_path / "toy_extension.py").write_text(TOY_MODULE)
    for group, name, text in (("model", "shrink", MODEL), ("loss", "mse_l2", LOSS)):
        (tmp_path / "conf" / group).mkdir(parents=True, exist_ok=True)
        (tmp_path / "conf" / group / f"{name}.yaml").write_text(text)
    run = tmp_path / "run"
    run_cli("train.py", "--config-dir", str(tmp_path / "conf"), "model=shrink", *QUICK, "trainer.max_epochs=2",
            f"hydra.run.dir={run}", env={"PYTHONPATH": str(tmp_path)})
    metrics = read_metrics(run)
    assert metrics["status"] == "finished" and metrics["epoch"] == 2
    assert "val/l2_code" in metrics and "val/mse" in metrics and metrics["val/l2_code"] > 0
    assert 0 < metrics["fvu"] < 1 and metrics["l0"] < 16  # it learned a sparse code that reconstructs
    config = (run / "config_resolved.yaml").read_text()
    assert "toy_extension.ShrinkSAE" in config and "margin: 0.5" in config

    refused = run_cli("train.py", "--config-dir", str(tmp_path / "conf"), "model=encoder", "loss=mse_l2", *QUICK,
                      f"hydra.run.dir={tmp_path / 'refused'}", env={"PYTHONPATH": str(tmp_path)}, check=False)
    # a term registers when its module is imported: here, only by a model of that module
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("error: unknown loss term(s) ['l2_code']")
