"""Per-unit statistics of a code ``a`` (and its pre-activation ``z``) accumulated over a dataset,
as a torchmetrics Metric so the sums reduce across devices. Everything is a sum of per-batch terms;
the correlation matrix comes from the summed outer products at ``compute`` time, in float64, over the
first ``corr_units`` units (all of them by default; k x k sums do not fit at 65k latents)."""
import torch
from torch import Tensor
from torchmetrics import Metric

from evaluation.linear_fits import row_chunks
from lightning_modules.losses import lse_and_responsibilities

DENSE = 0.1  # a latent firing on more than this fraction of examples counts as dense


class UnitStatistics(Metric):
    full_state_update = False

    def __init__(self, n_units: int, active_threshold: float = 0.01, low_variance: float = 0.01,
                 corr_units: int | None = None, **kwargs):
        super().__init__(**kwargs)  # torchmetrics' options (sync_on_compute)
        self.active_threshold, self.low_variance = active_threshold, low_variance
        self.corr_units = min(corr_units or n_units, n_units)
        vector, scalar = torch.zeros(n_units, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        matrix = torch.zeros(self.corr_units, self.corr_units, dtype=torch.float64)
        active_counts = torch.zeros(n_units + 1, dtype=torch.float64)  # examples with 0, 1, ..., n active
        for name, default in [("count", scalar), ("sum_a", vector), ("sum_sq", vector), ("sum_outer", matrix),
                              ("fired", vector), ("active_counts", active_counts),
                              ("active", scalar), ("active_eps", scalar), ("resp_entropy", scalar),
                              ("max_resp", scalar), ("sum_resp", vector), ("blocked_resp", scalar)]:
            self.add_state(name, default=default.clone(), dist_reduce_fx="sum")

    def update(self, z: Tensor, a: Tensor) -> None:
        # a chunk of rows at a time: a batch of 1024 codes of 65,536 latents is 512 MB in float64, and each of
        # the sums below would hold one or two such temporaries
        for z_rows, a_rows in zip(row_chunks(z.detach()), row_chunks(a.detach())):
            self.add_rows(z_rows, a_rows.double())

    def add_rows(self, z: Tensor, a: Tensor) -> None:
        _, resp = lse_and_responsibilities(a)
        self.count += len(a)
        self.sum_a += a.sum(dim=0)
        self.sum_sq += (a * a).sum(dim=0)
        tracked = a[:, :self.corr_units]
        self.sum_outer += tracked.T @ tracked
        self.fired += (a > 0).sum(dim=0)
        self.active += (a > 0).sum()
        self.active_counts += torch.bincount((a > 0).sum(1), minlength=len(self.active_counts)).double()
        self.active_eps += (a > self.active_threshold).sum()
        self.resp_entropy += torch.special.entr(resp).sum()
        self.max_resp += resp.max(dim=-1).values.sum()
        self.sum_resp += resp.sum(dim=0)
        self.blocked_resp += (resp * (z <= 0)).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.count
        mean = self.sum_a / n
        var = ((self.sum_sq - n * mean**2) / (n - 1)).clamp_min(0)
        alive = self.fired > 0
        m = self.corr_units
        cov = (self.sum_outer - n * torch.outer(mean[:m], mean[:m])) / (n - 1)
        corr = torch.zeros_like(cov)
        both = (var[:m] > 0)[:, None] & (var[:m] > 0)[None, :]
        corr[both] = (cov / torch.sqrt(torch.outer(var[:m], var[:m])).clamp_min(1e-30))[both]
        alive_corr = corr[alive[:m]][:, alive[:m]]
        k_alive = int(alive[:m].sum())
        redundancy = (alive_corr**2).sum() - (torch.diagonal(alive_corr) ** 2).sum()
        mean_resp = self.sum_resp / n
        return {
            "dead_units": (~alive).sum(),
            "dead_fraction": (~alive).double().mean(),
            "dense_fraction": (self.fired / n > DENSE).double().mean(),
            "low_variance_units": (var < self.low_variance).sum(),
            "redundancy": redundancy,
            "redundancy_norm": redundancy / max(k_alive * (k_alive - 1), 1),
            "resp_entropy": self.resp_entropy / n,
            "max_resp": self.max_resp / n,
            "effective_components": torch.exp(torch.special.entr(mean_resp).sum()),
            "l0": self.active / n,
            "frac_zero_active": self.active_counts[0] / n,  # examples no latent codes (reconstructed as a bias)
            "l0_eps": self.active_eps / n,
            "blocked_resp_mass": self.blocked_resp / n,
            "corr": corr,
            "firing_frequency": self.fired / n,
            "active_counts": self.active_counts,
        }
