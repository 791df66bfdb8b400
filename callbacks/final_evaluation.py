"""What the trained code carries, measured once at the end of fit: reconstruction on test (through
the decoder, or for the decoder-free encoder through its weights), the best affine read-out, sparsity,
and a linear probe of the labels against the same probe on the randomly initialised encoder."""
import copy
import logging

import torch
from torch import Tensor

from callbacks.metrics_file import report
from callbacks.read_out import ReadOut
from evaluation.linear_fits import affine_fvu, fvu, implicit_decoder_fits, probe_accuracy

log = logging.getLogger(__name__)


class FinalEvaluation(ReadOut):
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
        a_train, a_test = pl_module.codes(x_train, self.chunk_size), pl_module.codes(x_test, self.chunk_size)
        if a_train.shape[1] >= len(a_train):
            log.warning("fvu_affine: %d train examples for %d latents, so the affine read-out interpolates train "
                        "and its test FVU says little; raise callbacks.final_evaluation.max_examples above the "
                        "latents", len(a_train), a_train.shape[1])

        values = {"l0_test": float((a_test > 0).sum(1).double().mean())}
        if hasattr(pl_module, "decode"):
            x_hat = torch.cat([pl_module.decode(chunk) for chunk in a_test.split(self.chunk_size)])
            train_mean = getattr(trainer.datamodule, "train_mean", None)  # the whole split's, where known
            unexplained = fvu(x_test, x_hat, x_train.mean(0) if train_mean is None else train_mean.to(x_hat))
            values.update(mse=float((x_test - x_hat).double().square().mean()), fvu=unexplained,
                          explained_variance=1 - unexplained, fvu_affine=affine_fvu(a_train, x_train, a_test, x_test))
        else:
            values.update(implicit_decoder_fits(a_train, x_train, a_test, x_test, pl_module.feature_directions()))
        if self.probe:
            values["probe_acc"] = probe_accuracy(a_train, y_train, a_test, y_test)
            trained = copy.deepcopy(pl_module.state_dict())
            pl_module.load_state_dict(self.initial_state)
            try:
                init_train = pl_module.codes(x_train, self.chunk_size)
                init_test = pl_module.codes(x_test, self.chunk_size)
            finally:  # the trained weights go back even if encoding fails
                pl_module.load_state_dict(trained)
            values["probe_acc_init"] = probe_accuracy(init_train, y_train, init_test, y_test)
        pl_module.train(was_training)

        report(trainer, values)
