"""Fidelity of a sparse code of classifier logits: accuracy and cross-entropy when the logits are
replaced by their reconstructions, MSE in the normalised and the raw space, per split; the per-example
validation MSE; beside them the seed study's reference and a PCA of as many components as the code's test L0
(the same budget of numbers per example); written to summary.json and BEST_RESULTS.md in the run dir and to
the loggers."""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks.metrics_file import report
from callbacks.read_out import ReadOut
from evaluation.linear_fits import pca_reconstruction, principal_subspace, reconstructor
from runtime.files import write_whole

REFERENCE = {"l0": 1.63, "delta_acc": 0.0562, "delta_ce": 0.25}  # the seed study's JumpReLU, on test
SPARSEST, MAX_LOSS_SPARSEST = 1.1, 0.02  # goal: L0 <= 1.1 losing at most 2 points of accuracy


def fidelity(logits: Tensor, reconstructed: Tensor, labels: Tensor) -> dict[str, float]:
    """delta_acc is the accuracy lost (baseline - reconstructed, the seed study's sign: 0.0562 is a loss of
    5.62 points), delta_ce the cross-entropy gained (reconstructed - baseline): positive is worse for both."""
    acc, acc_recon = [float((z.argmax(1) == labels).double().mean()) for z in (logits, reconstructed)]
    ce, ce_recon = [float(F.cross_entropy(z.double(), labels)) for z in (logits, reconstructed)]
    return {"acc": acc, "acc_recon": acc_recon, "delta_acc": acc - acc_recon,
            "ce": ce, "ce_recon": ce_recon, "delta_ce": ce_recon - ce}


def markdown(summary: dict) -> str:
    splits = summary["splits"]
    lines = ["# Logit SAE fidelity", "", "| field | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in summary.items() if not isinstance(value, dict)]
    lines += ["", "## Accuracy and cross-entropy", "",
              "| split | acc | acc recon | Δacc (lost) | CE | CE recon | ΔCE |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {s['acc']:.4f} | {s['acc_recon']:.4f} | {s['delta_acc']:+.4f} | {s['ce']:.4f} | "
              f"{s['ce_recon']:.4f} | {s['delta_ce']:+.4f} |" for name, s in splits.items()]
    lines += ["", "## MSE", "", "| split | MSE normalised | MSE raw | L0 |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['mse_normalized']:.5g} | {s['mse_raw']:.5g} | {s['l0']:.3f} |"
              for name, s in splits.items()]
    per_example = summary["val_mse_per_example"]
    lines += ["", "## Per-example validation MSE (normalised)", "", "| " + " | ".join(per_example) + " |",
              "|---" * len(per_example) + "|", "| " + " | ".join(f"{v:.5g}" for v in per_example.values()) + " |"]
    test, pca = splits["test"], summary["pca_at_l0"]
    goal = test["l0"] <= SPARSEST and test["delta_acc"] <= MAX_LOSS_SPARSEST
    lines += ["", "## Against the seed's reference and a PCA of the same budget (test)", "",
              "| code | L0 | Δacc (points lost) | ΔCE |", "|---|---|---|---|",
              f"| this SAE | {test['l0']:.3g} | {100 * test['delta_acc']:.2f} | {test['delta_ce']:+.3f} |",
              f"| the seed's reference JumpReLU | {REFERENCE['l0']} | {100 * REFERENCE['delta_acc']:.2f} | "
              f"+{REFERENCE['delta_ce']} |",
              f"| PCA of train, {pca['k']} component{'s' * (pca['k'] > 1)} | {pca['k']} | {100 * pca['delta_acc']:.2f} | "
              f"{pca['delta_ce']:+.3f} |", "",
              f"Goal, L0 ≤ {SPARSEST} losing at most {100 * MAX_LOSS_SPARSEST:g} points: {'met' if goal else 'not met'}"
              + (" (the PCA meets it too)" if pca["k"] <= SPARSEST and pca["delta_acc"] <= MAX_LOSS_SPARSEST else "")
              + "."]
    return "\n".join(lines) + "\n"


class LogitFidelity(ReadOut):
    description = "the classifier's accuracy with its logits through the SAE"
    def __init__(self, output_dir: str, summary: dict | None = None):
        self.output_dir, self.summary = Path(output_dir), dict(summary or {})

    @torch.no_grad()
    def read_out(self, trainer, pl_module):
        datamodule, was_training = trainer.datamodule, pl_module.training
        pl_module.eval()
        codes = {name: pl_module.codes(x) for name, (x, _) in datamodule.splits.items()}
        decode = reconstructor(pl_module, datamodule.splits["train"][0], codes["train"])
        splits, per_example = {}, None
        for name, (x, labels) in datamodule.splits.items():
            x, labels = x.to(pl_module.device), labels.to(pl_module.device)
            x_hat = decode(codes[name]).to(x.dtype)
            raw, raw_hat = datamodule.inverse(x), datamodule.inverse(x_hat)
            errors = (x - x_hat).double().square().mean(1)
            splits[name] = fidelity(raw, raw_hat, labels) | {
                "mse_normalized": float(errors.mean()), "mse_raw": float((raw - raw_hat).double().square().mean()),
                "l0": float((codes[name] > 0).sum(1).double().mean()),
                "frac_zero_active": float(((codes[name] > 0).sum(1) == 0).double().mean())}
            if name == "val":
                per_example = {"mean": float(errors.mean()), "median": float(errors.median()),
                               "p95": float(errors.quantile(0.95)), "best_index": int(errors.argmin()),
                               "worst_index": int(errors.argmax())}
        pl_module.train(was_training)
        test = splits["test"]
        k = max(1, round(test["l0"]))
        mean, vectors = principal_subspace(datamodule.splits["train"][0], k)
        x_test, test_labels = datamodule.splits["test"]
        pca_hat = pca_reconstruction(x_test, mean.to(x_test.device), vectors.to(x_test.device)).to(x_test.dtype)
        pca = {"k": k} | fidelity(datamodule.inverse(x_test), datamodule.inverse(pca_hat), test_labels)
        summary = self.summary | {
            "achieved_actives_val": splits["val"]["l0"], "baseline_acc": test["acc"],
            "recon_acc_logits": test["acc_recon"], "delta_acc_logits": test["delta_acc"],
            "pca_at_l0": pca, "splits": splits, "val_mse_per_example": per_example}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_whole(self.output_dir / "summary.json", json.dumps(summary, indent=2))
        write_whole(self.output_dir / "BEST_RESULTS.md", markdown(summary))
        flat = {f"fidelity/{split}_{key}": value for split, row in splits.items() for key, value in row.items()}
        report(trainer, flat)
