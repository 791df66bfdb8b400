"""Downstream fidelity of an SAE on LM activations, at the end of training: the language model's loss
with the reconstruction spliced in place of the hooked activation, against the clean, zero-ablated and
mean-ablated runs (evaluation/downstream.py). The decoder-free encoder is spliced through the implicit
decoder fitted on train, as its MNIST benchmark reconstructs.

Beside it, the baseline of the same budget that could refute it: a PCA fitted on train with k = round(test
L0) components (k numbers per token, as the code's k active latents), its FVU and explained variance on the
same test tokens and its CE loss recovered through the same splice (``pca_*_at_l0``)."""
import logging

import torch
from tqdm import tqdm

from activations.language_model import is_causal
from callbacks.metrics_file import report
from callbacks.read_out import ReadOut
from evaluation.downstream import downstream_fidelity
from evaluation.linear_fits import fvu, pca_reconstruction, principal_subspace, reconstructor

log = logging.getLogger(__name__)


class DownstreamFidelity(ReadOut):
    description = "downstream fidelity and its PCA baseline (the LM's loss with the code spliced in)"
    def __init__(self, split: str = "test", max_sequences: int | None = None, batch_size: int = 16,
                 pca_baseline: bool = True):
        self.split, self.max_sequences, self.batch_size = split, max_sequences, batch_size
        self.pca_baseline = pca_baseline

    @torch.no_grad()
    def read_out(self, trainer, pl_module):
        dm = trainer.datamodule
        dm.load_lm()
        was_training = pl_module.training
        pl_module.eval()
        x_train = dm.splits["train"][0]
        reconstruct = reconstructor(pl_module, x_train)
        sequences = dm.sequences[self.split][:self.max_sequences]

        def spliced(x):
            return reconstruct(pl_module.codes(x)).to(x.dtype).to(x.device)

        reconstructions, values = {"": spliced}, {}
        if self.pca_baseline and "l0_test" in trainer.callback_metrics:
            k = max(1, round(float(trainer.callback_metrics["l0_test"])))
            mean, vectors = principal_subspace(x_train, min(k, x_train.shape[1]), dm.train_mean)
            x_test = dm.splits[self.split][0]
            unexplained = fvu(x_test, pca_reconstruction(x_test, mean, vectors), mean)
            values |= {"pca_k": k, "pca_fvu": unexplained, "pca_explained_variance": 1 - unexplained}
            reconstructions["pca_"] = lambda x: pca_reconstruction(x, mean.to(x.device), vectors.to(x.device))
        bar = tqdm(total=len(sequences), unit="window", desc="downstream fidelity", disable=not dm.progress,
                   dynamic_ncols=True)
        fidelity = downstream_fidelity(dm.lm, {dm.layer: dm.modules[dm.layer]}, sequences, reconstructions,
                                       dm.train_mean, is_causal(dm.config), self.batch_size,
                                       progress=lambda done: bar.update(done - bar.n))
        bar.close()
        values |= fidelity
        # the baseline's keys say the budget they were measured at: pca_ce_loss_recovered_at_l0, ...
        values = {f"{name}_at_l0" if name.startswith("pca_") else name: value for name, value in values.items()}
        pl_module.train(was_training)
        report(trainer, values)
        if "pca_downstream_recovered_at_l0" in values:
            log.info("downstream recovered %.3f ± %.3f vs PCA at k=%d: %.3f; explained variance %s vs PCA %.3f",
                     values["downstream_recovered"], values["downstream_recovered_se"], values["pca_k_at_l0"],
                     values["pca_downstream_recovered_at_l0"],
                     f"{float(trainer.callback_metrics.get('explained_variance', float('nan'))):.3f}",
                     values["pca_explained_variance_at_l0"])
