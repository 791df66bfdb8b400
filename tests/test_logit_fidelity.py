import math

import pytest
import torch

from callbacks.logit_fidelity import fidelity
from datamodules.gaussian_mixture import GaussianMixtureDataModule


def test_identity_reconstruction_changes_nothing():
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(10, (200,), generator=torch.Generator().manual_seed(1))
    result = fidelity(logits, logits.clone(), labels)
    assert result["delta_acc"] == 0 and result["delta_ce"] == 0
    assert result["acc"] == float((logits.argmax(1) == labels).double().mean())


def test_fidelity_on_a_known_case():
    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.eye(3)[labels] * 5  # all four right
    reconstructed = logits.clone()
    reconstructed[3] = torch.tensor([0.0, 5.0, 0.0])  # one of four now wrong
    result = fidelity(logits, reconstructed, labels)
    assert result["acc"] == 1.0 and result["acc_recon"] == 0.75 and result["delta_acc"] == 0.25  # lost
    right = -torch.log_softmax(torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64), 0)[0].item()
    wrong = -torch.log_softmax(torch.tensor([0.0, 5.0, 0.0], dtype=torch.float64), 0)[0].item()
    assert math.isclose(result["ce_recon"] - result["ce"], (wrong - right) / 4, rel_tol=1e-9)


@pytest.mark.parametrize("normalize", ["none", "center", "standardize"])
def test_normalisation_is_fitted_on_train_and_inverts_exactly(normalize):
    data = GaussianMixtureDataModule(input_dim=5, n_train=512, n_val=64, n_test=64, normalize=normalize)
    raw = GaussianMixtureDataModule(input_dim=5, n_train=512, n_val=64, n_test=64)
    data.setup(), raw.setup()
    for split in ("train", "val", "test"):
        torch.testing.assert_close(data.inverse(data.splits[split][0]), raw.splits[split][0])
    if normalize == "standardize":
        torch.testing.assert_close(data.splits["train"][0].std(0), torch.ones(5))
    if normalize != "none":
        assert data.splits["train"][0].mean(0).abs().max() < 1e-5
        assert data.splits["test"][0].mean(0).abs().max() > 1e-3  # test is not re-centred on itself
