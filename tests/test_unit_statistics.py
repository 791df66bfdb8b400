import math

import torch

from callbacks import unit_statistics
from callbacks.unit_statistics import UnitStatistics


def constructed_codes():
    """Unit 0 dead, units 1 and 2 identical (correlation 1), unit 3 independent noise."""
    generator = torch.Generator().manual_seed(0)
    base = torch.rand(200, generator=generator)
    noise = torch.rand(200, generator=generator)
    a = torch.stack([torch.zeros(200), base, base, noise], dim=1)
    return a.clone(), a


def test_dead_units_redundancy_and_l0_on_constructed_codes():
    z, a = constructed_codes()
    stats = UnitStatistics(4)
    stats.update(z, a)
    out = stats.compute()
    assert out["dead_units"] == 1 and math.isclose(out["dead_fraction"], 0.25)
    corr_12 = 1.0
    corr_13 = torch.corrcoef(torch.stack([a[:, 1], a[:, 3]]))[0, 1].item()
    expected = 2 * (corr_12**2 + 2 * corr_13**2)  # ordered pairs i != j among the 3 alive units
    assert math.isclose(out["redundancy"], expected, rel_tol=1e-9)
    assert math.isclose(out["redundancy_norm"], expected / 6, rel_tol=1e-9)
    assert math.isclose(out["l0"], (a > 0).sum().item() / 200, rel_tol=1e-12)
    assert math.isclose(out["l0_eps"], (a > 0.01).sum().item() / 200, rel_tol=1e-12)
    assert out["low_variance_units"] == 1  # the dead unit: uniform(0, 1) has variance 1/12


def test_responsibility_metrics_for_equal_energies():
    a = torch.ones(10, 8)
    stats = UnitStatistics(8)
    stats.update(-a, a)  # every z <= 0: all responsibility is blocked
    out = stats.compute()
    assert math.isclose(out["resp_entropy"], math.log(8), rel_tol=1e-12)
    assert math.isclose(out["max_resp"], 1 / 8, rel_tol=1e-12)
    assert math.isclose(out["effective_components"], 8, rel_tol=1e-12)
    assert math.isclose(out["blocked_resp_mass"], 1.0, rel_tol=1e-12)


def test_accumulating_batches_equals_one_pass(monkeypatch):
    z, a = constructed_codes()
    whole, parts = UnitStatistics(4), UnitStatistics(4)
    whole.update(z, a)
    monkeypatch.setattr(unit_statistics, "row_chunks", lambda rows: rows.split(30))  # each batch 30 rows at a time
    for chunk in (slice(0, 70), slice(70, 200)):
        parts.update(z[chunk], a[chunk])
    for name, value in whole.compute().items():
        torch.testing.assert_close(parts.compute()[name], value)


def test_correlations_over_the_first_units_match_the_full_computation_on_them():
    z, a = constructed_codes()
    wide = torch.cat([a, torch.rand(200, 5, generator=torch.Generator().manual_seed(1))], dim=1)
    capped, subset = UnitStatistics(9, corr_units=4), UnitStatistics(4)
    capped.update(wide, wide)
    subset.update(z, a)
    capped_out, subset_out = capped.compute(), subset.compute()
    for name in ("redundancy", "redundancy_norm", "corr"):
        torch.testing.assert_close(capped_out[name], subset_out[name])
    assert capped_out["dead_units"] == 1 and capped_out["firing_frequency"].shape == (9,)


def test_examples_with_no_active_latent_and_the_active_count_histogram():
    a = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    stats = UnitStatistics(3)
    stats.update(a - 0.5, a)
    values = stats.compute()
    assert float(values["frac_zero_active"]) == 0.5
    assert values["active_counts"].tolist() == [2, 1, 1, 0]
