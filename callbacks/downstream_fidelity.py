"""Downstream fidelity of an SAE on LM activations, at the end of training: the language model's loss
with the reconstruction spliced in place of the hooked activation, against the clean, zero-ablated and
mean-ablated runs (evaluation/downstream.py). The decoder-free encoder is spliced through the implicit
decoder fitted on train, as its MNIST benchmark reconstructs."""
import torch

from activations.language_model import is_causal
from callbacks.metrics_file import report
from callbacks.read_out import ReadOut
from evaluation.downstream import downstream_fidelity
from evaluation.linear_fits import reconstructor


class DownstreamFidelity(ReadOut):
    def __init__(self, split: str = "test", max_sequences: int = 64, batch_size: int = 16):
        self.split, self.max_sequences, self.batch_size = split, max_sequences, batch_size

    @torch.no_grad()
    def read_out(self, trainer, pl_module):
        dm = trainer.datamodule
        dm.load_lm()
        was_training = pl_module.training
        pl_module.eval()
        reconstruct = reconstructor(pl_module, dm.splits["train"][0])
        sequences = dm.sequences[self.split][:self.max_sequences]

        def spliced(x):
            return reconstruct(pl_module.codes(x)).to(x.dtype).to(x.device)

        values = downstream_fidelity(dm.lm, {dm.layer: dm.modules[dm.layer]}, sequences, spliced, dm.train_mean,
                                     is_causal(dm.config), self.batch_size)
        pl_module.train(was_training)
        report(trainer, values)
