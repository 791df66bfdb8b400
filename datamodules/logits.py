"""A classifier's logits as data. Train and val are an 80/20 seeded split of MNIST's training set, test
is MNIST's test set; the labels stay, so that fidelity can be measured. The logits are cached beside
the classifier checkpoint; without a checkpoint, the classifier is trained first, into the run dir."""
import hashlib
import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from datamodules.mnist import MNISTDataModule
from datamodules.tensor_batches import TensorDataModule, seeded_split


class LogitsDataModule(TensorDataModule):
    def __init__(self, classifier: pl.LightningModule, output_dir: str, classifier_ckpt: str | None = None,
                 classifier_trainer: dict | None = None, classifier_batch_size: int = 8,
                 mnist_dir: str | None = None, val_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if classifier_ckpt is not None and not Path(classifier_ckpt).is_file():
            raise FileNotFoundError(f"classifier checkpoint not found: {classifier_ckpt}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.classifier, self.classifier_ckpt = classifier, classifier_ckpt
        self.classifier_trainer = dict(classifier_trainer or {})
        self.mnist = MNISTDataModule(data_dir=mnist_dir, input_dim=784, batch_size=classifier_batch_size,
                                     seed=self.seed)
        self.output_dir, self.val_fraction = Path(output_dir), val_fraction

    def train_classifier(self) -> Path:
        path = self.output_dir / "classifier" / "classifier.ckpt"
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, default_root_dir=path.parent,
                             num_sanity_val_steps=0, enable_model_summary=False, **self.classifier_trainer)
        trainer.fit(self.classifier, datamodule=self.mnist)
        trainer.save_checkpoint(path)
        return path

    def load_classifier(self, path: Path) -> pl.LightningModule:
        try:
            classifier = type(self.classifier).load_from_checkpoint(path, map_location="cpu")
            classifier(torch.zeros(1, 784))
        except Exception as error:  # a checkpoint of another model, or of other inputs
            raise ValueError(f"classifier checkpoint {path} does not match the data: {error}".splitlines()[0]) from None
        if classifier.hparams.get("n_classes", self.input_dim) != self.input_dim:
            raise ValueError(f"classifier checkpoint {path} has {classifier.hparams.n_classes} classes, "
                             f"data.input_dim is {self.input_dim}")
        return classifier.eval()

    def load(self):
        path = Path(self.classifier_ckpt) if self.classifier_ckpt else self.train_classifier()
        digest = hashlib.md5(path.read_bytes()).hexdigest()[:12]  # a retrained checkpoint gets a new cache
        cache = path.with_name(f"{path.stem}.logits-{digest}-seed{self.seed}-val{self.val_fraction:g}.pt")
        if cache.is_file():
            return torch.load(cache)
        classifier = self.load_classifier(path)
        x_train, y_train = self.mnist.read_split("train")
        train, val = seeded_split(x_train, y_train, round(self.val_fraction * len(x_train)), self.seed)
        images = {"train": train, "val": val, "test": self.mnist.read_split("t10k")}
        with torch.no_grad():  # here, not as a decorator: training the classifier turns grad mode back on
            splits = {name: (torch.cat([classifier(chunk) for chunk in x.split(4096)]), y)
                      for name, (x, y) in images.items()}
        partial = cache.with_suffix(f".{os.getpid()}.tmp")  # the jobs of a sweep share the cache: whole or absent
        torch.save(splits, partial)
        os.replace(partial, cache)
        return splits
