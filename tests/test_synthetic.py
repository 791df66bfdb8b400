"""Synthetic data with known features: the ground-truth metrics on constructed cases (float64), a TopK SAE that
must recover the features (a regression bound a broken loss, decoder or metric fails), agreement with SAELens's
own evaluation through the export, streamed batches that resume exactly, and bad settings as one error line."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import read_metrics, run_cli
from datamodules.synthetic import SyntheticDataModule
from evaluation.ground_truth import ground_truth_metrics, random_directions_mcc

SMALL = ["data=synthetic", "data.num_features=64", "data.input_dim=32", "data.hierarchy=null", "data.correlation=null",
         "data.firing_probability.min_prob=0.01", "data.firing_probability.max_prob=0.2", "data.batches_per_epoch=400",
         "data.batch_size=512", "data.n_test=4096", "data.n_val=1024", "data.readout=2048", "trainer.max_epochs=1",
         "logger=csv", "callbacks.final_evaluation.probe=false", "callbacks.unit_metrics.figures=false"]
TOPK = ["model=topk", "+sparsity=2", "model.hidden_dim=64", "model.lr=3e-3"]
MCC_BOUND = 0.7  # measured 0.82 for this TopK after 400 steps; random unit directions score 0.42 on these features


@pytest.fixture(scope="module")
def topk_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("synthetic") / "topk"
    run_cli("train.py", *SMALL, *TOPK, f"hydra.run.dir={run_dir}")
    return run_dir


def test_a_topk_sae_recovers_the_true_features(topk_run):
    from sae_lens.synthetic import SyntheticModel

    metrics = read_metrics(topk_run)
    assert metrics["gt_mcc"] > MCC_BOUND
    true = SyntheticModel.load_from_disk(topk_run / "true_features").feature_dict.feature_vectors
    assert random_directions_mcc(true, 64) < MCC_BOUND - 0.2  # the bound is well above chance
    assert 0 < metrics["gt_f1"] <= 1 and 0.5 < metrics["gt_shrinkage"] < 1.2 and metrics["gt_true_l0"] > 1


def test_ground_truth_metrics_agree_with_saelens_evaluation_of_the_export(topk_run):
    from sae_lens import SAE
    from sae_lens.synthetic import SyntheticModel, eval_sae_on_synthetic_data

    run_cli("-m", "analysis.export", f"run={topk_run}")
    sae = SAE.load_from_disk(str(topk_run / "saelens"))
    truth = SyntheticModel.load_from_disk(topk_run / "true_features")
    torch.manual_seed(1)  # SAELens draws its own examples: firing metrics agree up to sampling
    theirs = eval_sae_on_synthetic_data(sae, truth.feature_dict, truth.activation_generator, num_samples=16384,
                                        batch_size=4096)
    ours = read_metrics(topk_run)
    assert ours["gt_mcc"] == pytest.approx(theirs.mcc, abs=1e-6)  # decoder directions only: identical
    assert ours["gt_uniqueness"] == pytest.approx(theirs.uniqueness, abs=1e-6)
    for name, value in [("precision", theirs.classification.precision), ("recall", theirs.classification.recall),
                        ("f1", theirs.classification.f1_score), ("shrinkage", theirs.shrinkage),
                        ("true_l0", theirs.true_l0)]:
        assert ours[f"gt_{name}"] == pytest.approx(value, abs=0.03 * max(1, value)), name
    assert ours["explained_variance"] == pytest.approx(theirs.explained_variance, abs=0.02)


def test_a_perfect_coder_scores_one_and_random_directions_the_expected_mcc():
    generator = torch.Generator().manual_seed(0)
    d, n = 16, 2000
    true = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))[0][:8]  # 8 orthonormal
    acts = torch.rand(n, 8, generator=generator, dtype=torch.float64) * (torch.rand(n, 8, generator=generator) < 0.2)
    x = acts @ true
    perfect = ground_truth_metrics(true, acts, true, acts, x, x)
    for name in ("mcc", "uniqueness", "precision", "recall", "f1", "shrinkage"):
        assert perfect[name] == pytest.approx(1.0, abs=1e-6), name
    assert perfect["dead_latents"] == 0 and perfect["true_l0"] == pytest.approx(float((acts > 0).sum(1).double().mean()))
    # one latent against one feature, many times: E|cos| of a random direction = Γ(d/2) / (√π Γ((d+1)/2))
    expected = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    draws = [ground_truth_metrics(torch.randn(1, d, generator=generator, dtype=torch.float64), acts[:, :1], true[:1],
                                  acts[:, :1], x)["mcc"] for _ in range(400)]
    assert sum(draws) / len(draws) == pytest.approx(expected, abs=0.02)


def test_absorption_counts_a_parent_latent_that_its_children_silence():
    from sae_lens.synthetic import HierarchyNode

    tree = SimpleNamespace(roots=[HierarchyNode(0, [HierarchyNode(1), HierarchyNode(2)])])
    true = torch.eye(3, 4, dtype=torch.float64)
    acts = torch.zeros(100, 3, dtype=torch.float64)
    acts[:, 0] = 1  # the parent everywhere; child 1 in rows 0-39, child 2 in rows 40-59, none in rows 60-99
    acts[:40, 1], acts[40:60, 2] = 1, 1
    absorbed = acts.clone()
    absorbed[:60, 0] = 0  # the parent's latent fires only where no child does
    values = ground_truth_metrics(true, absorbed, true, acts, acts @ true, hierarchy=tree)
    assert values["absorption_rate"] == 1 and values["parent_miss_alone"] == 0 and values["absorption_parents"] == 1
    faithful = ground_truth_metrics(true, acts, true, acts, acts @ true, hierarchy=tree)
    assert faithful["absorption_rate"] == 0 and faithful["parent_miss_alone"] == 0


def test_streamed_batches_resume_exactly_and_follow_the_seed():
    data = SyntheticDataModule(num_features=32, input_dim=8, hierarchy=None, correlation=None, batches_per_epoch=6,
                               batch_size=16, n_val=8, n_test=8, readout=8)
    data.setup()
    batches = data.train_dataloader()
    whole = [x for x, _ in batches]
    assert len(whole) == 6 and not torch.equal(whole[0], whole[1])
    resumed = data.train_dataloader()
    resumed.load_state_dict({"epoch": 0, "position": 4})  # as Lightning restores a checkpoint of step 4
    assert all(torch.equal(a, b) for (a, _), b in zip(resumed, whole[4:])) and resumed.position == 6
    again = data.train_dataloader()
    again.set_epoch(1)
    assert not torch.equal(next(iter(again))[0], whole[0])  # a new epoch, new examples
    other = SyntheticDataModule(num_features=32, input_dim=8, hierarchy=None, correlation=None, batches_per_epoch=6,
                                batch_size=16, n_val=8, n_test=8, readout=8, seed=1)
    other.setup()
    assert torch.equal(other.splits["test"][0], data.splits["test"][0])  # the data's seed, not the run's
    assert not torch.equal(next(iter(other.train_dataloader()))[0], whole[0])


def test_the_encoder_is_scored_through_its_rows(tmp_path):
    run_cli("train.py", *SMALL, "data.batches_per_epoch=50", "model=encoder", "model.hidden_dim=64",
            f"hydra.run.dir={tmp_path}")
    metrics = read_metrics(tmp_path)
    assert 0 < metrics["gt_mcc"] < 1 and "gt_f1" in metrics and "gt_shrinkage" not in metrics  # no decoder


@pytest.mark.parametrize("override, message", [
    ("data.firing_probability.max_prob=1.5", "every firing probability must lie in (0, 1]"),
    ("data.firing_probability.min_prob=0", "every firing probability must lie in (0, 1]"),
    ("data.hierarchy.total_root_nodes=64", "data.hierarchy does not fit: 64 roots, branching 4, depth 2 need 1344"),
    ("data.num_features=100000000", "GiB of dense true activations"),
])
def test_bad_synthetic_settings_are_one_error_line(override, message, tmp_path):
    result = run_cli("train.py", "data=synthetic", override, f"hydra.run.dir={tmp_path}", check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr and not (tmp_path / "metrics.json").exists()


def test_the_true_dictionary_is_saved_beside_the_run(topk_run):
    config = json.loads((topk_run / "true_features" / "synthetic_model_config.json").read_text())
    assert config["num_features"] == 64 and config["hidden_dim"] == 32


def test_analysis_tables_and_plots_a_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    run_cli("train.py", "-m", *SMALL, "data.batches_per_epoch=50", "model=topk,encoder", "+sparsity=2",
            "model.hidden_dim=64", f"hydra.sweep.dir={sweep}")
    run_cli("-m", "analysis.synthetic", f"dir={sweep}")
    table = (sweep / "analysis" / "synthetic.md").read_text()
    assert "| topk:mse_auxk (k 2) | 1 |" in table and "| encoder:lse_var_tc (–) | 1 |" in table
    assert "random unit directions" in table and (sweep / "analysis" / "synthetic.png").stat().st_size > 0
