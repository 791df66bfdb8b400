"""How well a sparse coder recovers known features (synthetic data, datamodules/synthetic.py), by SAELens's own
definitions where it has one (``sae_lens.synthetic.evals``, those of SynthSAEBench, arXiv 2602.14687):

    mcc            mean |cos| between latent directions and true features over a one-to-one (Hungarian) matching:
                   min(latents, features) pairs
    uniqueness     distinct true features that are some latent's best match (by |cos|), over the latents
    precision,     of firing: each latent against its best-matching true feature (many latents may share one),
    recall, f1     per latent, then averaged over the latents (a dead latent counts 0)
    shrinkage      mean ||x_hat|| / ||x|| over examples (a decoder's; 1 is no shrinkage)
    dead_latents   the fraction of latents that never fire on the examples

and one SAELens lacks, for a hierarchy (a child fires only with its parent):

    absorption_rate        per parent feature with children, the latent best matching the parent's direction is
                           off on examples where the parent and one of its children fire (the child's latent
                           absorbed the parent), averaged over parents
    parent_miss_alone      the same latent off where the parent fires with none of its children: the baseline that
                           absorption_rate exceeds where absorption, not a weak latent, explains the misses

A latent's direction is its decoder row; the decoder-free encoder has no decoder, so its encoder rows stand in
(the implicit decoder it is read through). Inputs are float64 where the arithmetic is this module's own."""
import torch
from torch import Tensor

MIN_EXAMPLES = 20  # examples a parent needs in each case before its absorption counts
# the untrained baseline's seed: not a small one, since a dictionary drawn by randn under the same seed (SAELens
# seeds its dictionary with dictionary_seed, 0 by default) would be the "random" directions themselves
BASELINE_SEED = 2**40 + 7


def ground_truth_metrics(directions: Tensor, codes: Tensor, true_directions: Tensor, true_activations: Tensor,
                         x: Tensor, x_hat: Tensor | None = None, hierarchy=None, chunk: int = 4096) -> dict:
    """``directions`` [latents, d], ``codes`` [n, latents], ``true_directions`` [N, d], ``true_activations`` [n, N],
    ``x`` / ``x_hat`` [n, d]; ``hierarchy`` SAELens's (its ``roots``), or None."""
    from sae_lens.synthetic import (ClassificationMetricsCalculator, DeadLatentsCalculator, ShrinkageCalculator,
                                    feature_uniqueness, mean_correlation_coefficient)

    directions, true_directions = directions.detach().float().cpu(), true_directions.detach().float().cpu()
    classification = ClassificationMetricsCalculator(directions, true_directions)
    dead = DeadLatentsCalculator(len(directions))
    shrinkage = ShrinkageCalculator() if x_hat is not None else None
    for start in range(0, len(codes), chunk):
        rows = slice(start, start + chunk)
        classification.add_batch(codes[rows].float().cpu(), true_activations[rows].float().cpu())
        dead.add_batch(codes[rows].float().cpu())
        if shrinkage is not None:
            shrinkage.add_batch(x_hat[rows].float().cpu(), x[rows].float().cpu())
    fired = classification.compute()
    values = {"mcc": float(mean_correlation_coefficient(directions, true_directions)),
              "uniqueness": float(feature_uniqueness(directions, true_directions)),
              "precision": float(fired.precision), "recall": float(fired.recall), "f1": float(fired.f1_score),
              "dead_latents": dead.compute() / len(directions),
              "true_l0": float((true_activations > 0).sum(1).double().mean())}
    if shrinkage is not None:
        values["shrinkage"] = float(shrinkage.compute())
    if hierarchy is not None:
        values.update(absorption(directions, codes, true_directions, true_activations, parents(hierarchy)))
    return values


def random_directions_mcc(true_directions: Tensor, latents: int, draws: int = 5) -> float:
    """The MCC of ``latents`` random unit directions against the true features, averaged over draws: what an
    untrained coder of that width scores."""
    from sae_lens.synthetic import mean_correlation_coefficient

    generator = torch.Generator().manual_seed(BASELINE_SEED)
    true_directions = true_directions.detach().float().cpu()
    return sum(mean_correlation_coefficient(torch.nn.functional.normalize(
        torch.randn(latents, true_directions.shape[1], generator=generator), dim=1), true_directions)
        for _ in range(draws)) / draws


def parents(hierarchy) -> dict[int, list[int]]:
    """Each feature with children in SAELens's hierarchy, and the features of its children."""
    found, stack = {}, list(hierarchy.roots)
    while stack:
        node = stack.pop()
        children = [child.feature_index for child in node.children if child.feature_index is not None]
        if node.feature_index is not None and children:
            found[node.feature_index] = children
        stack.extend(node.children)
    return found


def absorption(directions: Tensor, codes: Tensor, true_directions: Tensor, true_activations: Tensor,
               family: dict[int, list[int]]) -> dict:
    """``absorption_rate`` and ``parent_miss_alone`` (the module's docstring), over the parents with at least
    MIN_EXAMPLES examples of each case; NaN where none has."""
    cos = (torch.nn.functional.normalize(true_directions.double(), dim=1)
           @ torch.nn.functional.normalize(directions.double(), dim=1).T).abs()  # [N, latents]
    with_child, alone = [], []
    for parent, children in family.items():
        on = true_activations[:, parent] > 0
        child_on = (true_activations[:, children] > 0).any(1)
        latent_off = codes[:, int(cos[parent].argmax())] <= 0
        both, only = on & child_on, on & ~child_on
        if int(both.sum()) >= MIN_EXAMPLES and int(only.sum()) >= MIN_EXAMPLES:
            with_child.append(float(latent_off[both].double().mean()))
            alone.append(float(latent_off[only].double().mean()))
    nan = float("nan")
    return {"absorption_rate": sum(with_child) / len(with_child) if with_child else nan,
            "parent_miss_alone": sum(alone) / len(alone) if alone else nan, "absorption_parents": len(with_child)}
