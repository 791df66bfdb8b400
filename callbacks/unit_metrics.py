"""Dead units, redundancy, responsibilities and feature usage on the validation set, logged at the
end of each validation epoch; per-run figures and arrays at the end of fit."""
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from callbacks.unit_statistics import UnitStatistics
from evaluation.plots import save_figure, unit_figures


class UnitMetrics(pl.Callback):
    def __init__(self, output_dir: str, figures: bool = True, corr_units: int | None = None, label: str = "",
                 formats: tuple[str, ...] = ("png",)):
        self.output_dir = Path(output_dir)
        self.label = label  # what the run is (its overrides), for the figures' titles
        self.figures, self.corr_units, self.formats = figures, corr_units, tuple(formats)
        self.arrays: dict[str, np.ndarray] = {}
        self.dead_at_init: float | None = None

    def state_dict(self) -> dict:
        return {"dead_at_init": self.dead_at_init}  # measured on the initial weights, which a resume no longer has

    def load_state_dict(self, state_dict: dict) -> None:
        self.dead_at_init = state_dict["dead_at_init"]

    def setup(self, trainer, pl_module, stage):
        self.n_units = pl_module.feature_directions().shape[0]
        self.stats = UnitStatistics(self.n_units, corr_units=self.corr_units).to(pl_module.device)

    @staticmethod
    @torch.no_grad()
    def measure(stats: UnitStatistics, trainer, pl_module) -> dict:
        """The statistics over the whole validation split, outside a validation loop."""
        stats.to(pl_module.device)
        for x, *_ in trainer.datamodule.val_dataloader():
            stats.update(*pl_module.encode(x.to(pl_module.device)))
        values = stats.compute()
        stats.reset()
        return values

    def on_fit_start(self, trainer, pl_module):
        if self.dead_at_init is None:  # on resume, the checkpoint restored it before this hook
            self.dead_at_init = float(self.measure(self.stats, trainer, pl_module)["dead_units"])

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.stats.update(outputs.z, outputs.a)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        values = self.stats.compute()
        self.stats.reset()
        self.arrays = {name: values.pop(name).cpu().numpy() for name in ("corr", "firing_frequency", "active_counts")}
        scalars = {name: float(value) for name, value in values.items()}
        scalars["dead_at_init"] = self.dead_at_init
        scalars["weight_norm"] = float(pl_module.feature_directions().detach().norm())
        scalars["params"] = float(sum(p.numel() for p in pl_module.parameters() if p.requires_grad))
        pl_module.log_dict(scalars, sync_dist=True)  # equal on every rank already (torchmetrics syncs)

    def on_fit_end(self, trainer, pl_module):
        if trainer.global_rank != 0:
            return
        if not self.arrays:  # resumed after its last validation (killed while writing these): measure again
            on_rank_zero = UnitStatistics(self.n_units, corr_units=self.corr_units, sync_on_compute=False)
            values = self.measure(on_rank_zero, trainer, pl_module)
            self.arrays = {name: values[name].cpu().numpy() for name in ("corr", "firing_frequency", "active_counts")}
        directions = pl_module.feature_directions().detach().cpu().numpy()
        np.savez(self.output_dir / "unit_stats.npz", directions=directions, **self.arrays)
        if not self.figures:
            return
        figures = unit_figures(self.arrays["corr"], directions, self.arrays["firing_frequency"],
                               self.arrays["active_counts"], self.label)
        for name, figure in figures.items():
            for path in save_figure(figure, self.output_dir / "figures" / name, self.formats):
                for logger in trainer.loggers:
                    if isinstance(logger, WandbLogger) and path.suffix == ".png":
                        logger.log_image(key=f"figures/{name}", images=[str(path)])
