"""What the trained code carries, measured once at the end of fit: reconstruction on test (through
the decoder, or for the decoder-free encoder through its weights), the best affine read-out, sparsity,
and a linear probe of the labels against the same probe on the randomly initialised encoder."""
import copy
import logging

import torch
from torch import Tensor

from callbacks.metrics_file import report
from callbacks.read_out import ReadOut
from evaluation.linear_fits import (SPARSE_DENSITY, affine_decoder, affine_fvu, fvu, implicit_decoder_fits,
                                   probe_accuracy, project)

log = logging.getLogger(__name__)
CHUNK_ELEMENTS = 2**26  # codes encoded at a time: 256 MB in float32, however wide the model


class FinalEvaluation(ReadOut):
    description = "reconstruction, affine read-out and probes on test"
    def __init__(self, probe: bool = True, max_examples: int | None = None, chunk_size: int = 4096):
        self.probe, self.max_examples, self.chunk_size = probe, max_examples, chunk_size
        self.initial_state: dict[str, Tensor] | None = None

    def state_dict(self) -> dict:
        return {"initial_state": self.initial_state}  # a resumed run keeps its true initialisation

    def load_state_dict(self, state_dict: dict) -> None:
        self.initial_state = state_dict["initial_state"]

    def on_fit_start(self, trainer, pl_module):
        super().on_fit_start(trainer, pl_module)
        # only the probe reads it: at LM width a copy of the weights would sit in memory and in every checkpoint
        if self.probe and self.initial_state is None:  # on resume, the checkpoint restored it before this hook
            self.initial_state = copy.deepcopy(pl_module.state_dict())

    @torch.no_grad()
    def read_out(self, trainer, pl_module):
        was_training = pl_module.training
        pl_module.eval()
        (x_train, y_train), (x_test, y_test) = trainer.datamodule.splits["train"], trainer.datamodule.splits["test"]
        if self.max_examples is not None and len(x_train) > self.max_examples:
            keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:self.max_examples]
            x_train, y_train = x_train[keep], y_train[keep]
        x_train, x_test = x_train.to(pl_module.device), x_test.to(pl_module.device)
        y_train, y_test = y_train.to(pl_module.device), y_test.to(pl_module.device)
        latents = pl_module.feature_directions().shape[0]
        rows = max(1, min(self.chunk_size, CHUNK_ELEMENTS // latents))  # a chunk's codes stay near 256 MB
        if latents >= len(x_train):
            log.warning("fvu_affine: %d train examples for %d latents, so the affine read-out interpolates train "
                        "and its test FVU says little; raise callbacks.final_evaluation.max_examples above the "
                        "latents", len(x_train), latents)
        if hasattr(pl_module, "decode") and not self.probe:
            values = streamed_reconstruction(pl_module, x_train, x_test, rows, trainer.datamodule)
        else:
            a_train, a_test = pl_module.codes(x_train, rows), pl_module.codes(x_test, rows)
            values = {"l0_test": float((a_test > 0).sum(1).double().mean())}
            if hasattr(pl_module, "decode"):
                x_hat = torch.cat([pl_module.decode(chunk) for chunk in a_test.split(rows)])
                train_mean = getattr(trainer.datamodule, "train_mean", None)  # the whole split's, where known
                unexplained = fvu(x_test, x_hat, x_train.mean(0) if train_mean is None else train_mean.to(x_hat))
                values.update(mse=float((x_test - x_hat).double().square().mean()), fvu=unexplained,
                              explained_variance=1 - unexplained,
                              fvu_affine=affine_fvu(a_train, x_train, a_test, x_test))
            else:
                values.update(implicit_decoder_fits(a_train, x_train, a_test, x_test, pl_module.feature_directions()))
        if self.probe:
            values["probe_acc"] = probe_accuracy(a_train, y_train, a_test, y_test)
            trained = copy.deepcopy(pl_module.state_dict())
            pl_module.load_state_dict(self.initial_state)
            try:
                init_train = pl_module.codes(x_train, rows)
                init_test = pl_module.codes(x_test, rows)
            finally:  # the trained weights go back even if encoding fails
                pl_module.load_state_dict(trained)
            values["probe_acc_init"] = probe_accuracy(init_train, y_train, init_test, y_test)
        pl_module.train(was_training)

        report(trainer, values)


def streamed_reconstruction(pl_module, x_train: Tensor, x_test: Tensor, rows: int, datamodule) -> dict[str, float]:
    """The reconstruction metrics of the unstreamed path, from sums over chunks of test: no test code is held
    whole (at 65,536 latents a 200,000-token split's would be 52 GB). The train codes the affine read-out is
    fitted on are held as their nonzeros where they are sparse and the latents outnumber the rows (its dual fit
    then reads only those)."""
    a_train, sparse = [], None
    for x in x_train.split(rows):
        a = pl_module.codes(x, rows)
        if sparse is None:  # as the first chunk is
            sparse = a.shape[1] > len(x_train) and torch.count_nonzero(a) <= SPARSE_DENSITY * a.numel()
        a_train.append(a.to_sparse() if sparse else a)
    a_train = torch.cat(a_train)
    decoder, offset = affine_decoder(a_train, x_train)
    del a_train
    train_mean = getattr(datamodule, "train_mean", None)  # the whole split's, where known
    x_mean = (x_train.mean(0) if train_mean is None else train_mean).double().to(x_test.device)
    sums = dict.fromkeys(("active", "error", "affine_error", "variance"), 0.0)
    for x in x_test.split(rows):
        a = pl_module.codes(x, rows)
        x = x.double()
        sums["active"] += float((a > 0).sum())
        sums["error"] += float((x - pl_module.decode(a).double()).square().sum())
        sums["affine_error"] += float((x - project(a, decoder) - offset).square().sum())
        sums["variance"] += float((x - x_mean).square().sum())
    unexplained = sums["error"] / sums["variance"]
    return {"l0_test": sums["active"] / len(x_test), "mse": sums["error"] / x_test.numel(), "fvu": unexplained,
            "explained_variance": 1 - unexplained, "fvu_affine": sums["affine_error"] / sums["variance"]}
