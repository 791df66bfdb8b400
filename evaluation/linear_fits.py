"""Linear read-outs of frozen codes, fitted on train and scored on test: how much of x a code carries
linearly (FVU), the PCA baseline at the same width, and a logistic-regression probe of the labels.
Fits run in float64 on the inputs' device, whatever their dtype."""
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

TINY = torch.finfo(torch.float64).tiny
SPARSE_DENSITY = 0.1  # codes with at most this fraction of entries set are multiplied as their nonzeros


def fvu(x: Tensor, x_hat: Tensor, x_mean: Tensor) -> float:
    """Fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - x_mean||^2. ``x_mean`` is the
    train mean, so that predicting it scores about 1 on test instead of being fitted to test."""
    x, x_hat, x_mean = x.double(), x_hat.double(), x_mean.double()
    return float((x - x_hat).square().sum() / (x - x_mean).square().sum())


def affine_fvu(a_train: Tensor, x_train: Tensor, a_test: Tensor, x_test: Tensor, ridge: float = 1e-8) -> float:
    """Test FVU of the least-squares affine decoder [a, 1] -> x fitted on train (``affine_decoder``)."""
    decoder, offset = affine_decoder(a_train, x_train, ridge)
    return fvu(x_test, project(a_test, decoder) + offset, x_train.double().mean(0))


def affine_decoder(a_train: Tensor, x_train: Tensor, ridge: float = 1e-8) -> tuple[Tensor, Tensor]:
    """The least-squares affine decoder [a, 1] -> x on train, as (decoder [k, d], offset [d]), float64:
    centring fits the intercept, unpenalised, and the decoder is the ridge solution
    (A^T A + lam I)^-1 A^T X = A^T (A A^T + lam I)^-1 X, solved through whichever Gram matrix is smaller
    (k x k for k latents, n x n for n train rows), so that 65,536 latents never form a k x k matrix. Dead or
    constant units are zero columns after centring, which makes the Gram matrix singular: a tiny ridge,
    relative to its mean diagonal so that it ignores the codes' scale, keeps it solvable and bounds its
    conditioning. Codes widen to float64 a chunk of rows at a time (k <= n) or as their nonzeros only
    (k > n, where ``a_train`` may come sparse already), never whole."""
    x_mean = x_train.double().mean(0)
    if a_train.is_sparse:
        a_mean = torch.sparse.sum(a_train.double(), dim=0).to_dense() / len(a_train)
    else:
        a_mean = sum(rows.sum(0, dtype=torch.float64) for rows in row_chunks(a_train)) / len(a_train)
    fit = primal_decoder if a_train.shape[1] <= len(a_train) else dual_decoder
    decoder = fit(a_train, x_train.double() - x_mean, a_mean, ridge)
    return decoder, x_mean - a_mean @ decoder


def primal_decoder(a: Tensor, x: Tensor, a_mean: Tensor, ridge: float) -> Tensor:
    """[k, d] from the k x k Gram matrix of the centred codes (normal equations, not lstsq: one k x k
    solve instead of a factorisation of the n x k codes)"""
    gram = a.new_zeros(a.shape[1], a.shape[1], dtype=torch.float64)
    cross = a.new_zeros(a.shape[1], x.shape[1], dtype=torch.float64)
    for rows, targets in zip(row_chunks(a), x.split(row_chunk_size(a.shape[1]))):
        centred = rows.double() - a_mean
        gram += centred.T @ centred
        cross += centred.T @ targets
    return ridge_solve(gram, cross, gram.trace() / a.shape[1], ridge)


def dual_decoder(a: Tensor, x: Tensor, a_mean: Tensor, ridge: float) -> Tensor:
    """[k, d] from the n x n Gram matrix of the codes, centred by rank-one corrections:
    (A - 1 mu^T)(A - 1 mu^T)^T = A A^T - u 1^T - 1 u^T + mu^T mu, with u = A mu. Codes at most SPARSE_DENSITY
    set (a trained SAE's) multiply as their nonzeros; denser ones (an untrained one's) a block of latents at a
    time, in float64. The [k, d] decoder is the one large allocation: at 65,536 latents it is 2 GB, and its
    blocks and centring are written into it in place."""
    if a.is_sparse or torch.count_nonzero(a) <= SPARSE_DENSITY * a.numel():
        sparse = a.double() if a.is_sparse else torch.cat([rows.to_sparse().double() for rows in row_chunks(a)])
        with warnings.catch_warnings():  # sparse x sparse goes through CSR, which torch calls beta
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            product = torch.sparse.mm(sparse, sparse.t()).to_dense()
        u, transpose_times = sparse @ a_mean, lambda rhs: sparse.t() @ rhs
    else:
        width = row_chunk_size(len(a))
        blocks = list(zip(a.split(width, dim=1), a_mean.split(width)))
        product = sum(block.double() @ block.double().T for block, _ in blocks)
        u = sum(block.double() @ mean for block, mean in blocks)

        def transpose_times(rhs: Tensor) -> Tensor:
            out = rhs.new_empty(a.shape[1], rhs.shape[1])
            for (block, _), rows in zip(blocks, out.split(width)):
                torch.mm(block.double().T, rhs, out=rows)
            return out
    gram = product - u[:, None] - u[None, :] + a_mean @ a_mean
    coefficients = ridge_solve(gram, x, gram.trace() / a.shape[1], ridge)
    return transpose_times(coefficients).addr_(a_mean, coefficients.sum(0), alpha=-1)


def ridge_solve(gram: Tensor, rhs: Tensor, mean_diagonal: Tensor, ridge: float) -> Tensor:
    eye = torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge * (float(mean_diagonal) or 1.0) * eye, rhs)


def row_chunk_size(width: int, elements: int = 2**24) -> int:
    """Rows per chunk so that a chunk of codes widened to float64 stays near 128 MB, however many latents."""
    return max(1, elements // max(width, 1))


def row_chunks(a: Tensor) -> tuple[Tensor, ...]:
    return a.split(row_chunk_size(a.shape[-1]))


def project(a: Tensor, W: Tensor) -> Tensor:
    """a @ W in float64, widening a chunk of rows at a time."""
    W = W.double()
    return torch.cat([rows.double() @ W for rows in row_chunks(a)])


def fit_implicit_decoder(p_train: Tensor, x_train: Tensor, W: Tensor) -> tuple[Callable[[Tensor], Tensor], float]:
    """The decoder-free encoder's reconstruction through its weight W [k, d] used as decoder W^T, from the
    train codes' projections p_train = a_train @ W (``project``). Nothing in training ties the scale or
    offset of a @ W to x, so x_hat = x_mean + alpha (a @ W - mean_train(a @ W)) fits the offset and one
    scalar gain alpha on train. Returns (decode, alpha)."""
    x_train = x_train.double()
    x_mean, p_mean = x_train.mean(0), p_train.mean(0)
    centred = p_train - p_mean
    alpha = float(((x_train - x_mean) * centred).sum() / centred.square().sum().clamp_min(TINY))  # 0 if all dead
    return (lambda a: x_mean + alpha * (project(a, W) - p_mean)), alpha


def reconstructor(model, x_train: Tensor, a_train: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Codes -> reconstructions: the model's decoder, or for the decoder-free encoder its implicit one,
    fitted on ``x_train`` (encoded here a chunk at a time unless its codes ``a_train`` are given)."""
    if hasattr(model, "decode"):
        return model.decode
    W = model.feature_directions()
    if a_train is None:
        p_train = torch.cat([project(model.codes(rows), W) for rows in x_train.split(row_chunk_size(len(W)))])
    else:
        p_train = project(a_train, W)
    return fit_implicit_decoder(p_train, x_train.to(p_train.device), W)[0]


def implicit_decoder_fits(a_train: Tensor, x_train: Tensor, a_test: Tensor, x_test: Tensor,
                          W: Tensor) -> dict[str, float]:
    """Test scores of ``fit_implicit_decoder``; the raw ``mse_raw`` of a @ W is only a diagnostic, and
    ``fvu_affine`` is the best any affine read-out of the code does."""
    decode, alpha = fit_implicit_decoder(project(a_train, W), x_train, W)
    x_test = x_test.double()
    x_hat = decode(a_test)
    unexplained = fvu(x_test, x_hat, x_train.double().mean(0))
    return {"mse_raw": float((x_test - project(a_test, W)).square().mean()),
            "mse": float((x_test - x_hat).square().mean()),
            "fvu": unexplained, "explained_variance": 1 - unexplained, "alpha": alpha,
            "fvu_affine": affine_fvu(a_train, x_train, a_test, x_test)}


def principal_subspace(x_train: Tensor, k: int, mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(mean, the top-k principal directions [d, k]) of train in float64; ``mean`` centres instead of the
    rows' own mean where the whole split's is known."""
    x_mean = x_train.double().mean(0) if mean is None else mean.double().to(x_train.device)
    centred = x_train.double() - x_mean
    return x_mean, torch.linalg.eigh(centred.T @ centred).eigenvectors.flip(1)[:, :k]  # d x d: cheap when n >> d


def pca_reconstruction(x: Tensor, mean: Tensor, vectors: Tensor) -> Tensor:
    """x projected onto the principal subspace about the mean, in float64."""
    return mean + (x.double() - mean) @ vectors @ vectors.T


def pca_fvu(x_train: Tensor, x_test: Tensor, k: int, mean: Tensor | None = None) -> float:
    """Test FVU of the projection onto the top-k principal subspace of train: the linear baseline."""
    x_mean, vectors = principal_subspace(x_train, k, mean)
    return fvu(x_test, pca_reconstruction(x_test, x_mean, vectors), x_mean)


def probe_accuracy(features_train: Tensor, y_train: Tensor, features_test: Tensor, y_test: Tensor,
                   max_iter: int = 50, l2: float = 1e-4) -> float:
    """Test accuracy of a multinomial logistic regression on frozen, standardised features, trained
    full-batch by L-BFGS from zero, hence deterministic. float32: float64 doubles the time for nothing;
    50 iterations: on MNIST pixels the test accuracy is flat (92.5%) from 30 to 200."""
    mean, std = features_train.mean(0), features_train.std(0)
    # a near-constant feature (an MNIST border pixel, a rarely firing unit) would be blown up on test
    std = std.clamp_min(1e-3 * float(std.max()) or 1.0)
    f_train, f_test = ((features_train - mean) / std).float(), ((features_test - mean) / std).float()
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    # [classes, features] for F.linear: its backward avoids a transposed n x d matmul, slow on CPU
    weight = torch.zeros(n_classes, f_train.shape[1], device=f_train.device, requires_grad=True)
    bias = torch.zeros(n_classes, device=f_train.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(f_train, weight, bias), y_train) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers evaluate under no_grad
        optimizer.step(closure)
    with torch.no_grad():
        return float((F.linear(f_test, weight, bias).argmax(1) == y_test).float().mean())
