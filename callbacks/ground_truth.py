"""Recovery of the known features, once at the end of fit, on synthetic data's test split
(evaluation/ground_truth.py): into metrics.json as ``gt_*``. On data without true features it does nothing."""
import torch

from callbacks.metrics_file import report
from callbacks.read_out import ReadOut
from evaluation.ground_truth import ground_truth_metrics


class GroundTruth(ReadOut):
    description = "recovery of the true features on test"

    def __init__(self, chunk_size: int = 4096):
        self.chunk_size = chunk_size

    def timed_read_out(self, trainer, pl_module) -> None:
        if getattr(trainer.datamodule, "true_activations", None):  # the line only where there is something to read
            super().timed_read_out(trainer, pl_module)

    @torch.no_grad()
    def read_out(self, trainer, pl_module):
        data = trainer.datamodule
        x = data.splits["test"][0]
        codes = pl_module.codes(x, self.chunk_size).cpu()
        x_hat = torch.cat([pl_module.decode(chunk.to(pl_module.device)).cpu() for chunk in codes.split(self.chunk_size)]) \
            if hasattr(pl_module, "decode") else None
        values = ground_truth_metrics(pl_module.feature_directions(), codes, data.model.feature_dict.feature_vectors,
                                      data.true_activations["test"], x, x_hat, data.model.hierarchy, self.chunk_size)
        report(trainer, {f"gt_{name}": value for name, value in values.items()})
