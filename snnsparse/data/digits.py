"""scikit-learn's bundled 8x8 digits (1797 images, no download) as a fixed train/test split."""
import torch

from .split import Split


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Split:
    """x [N, 1, 8, 8] in [0, 1] (pixel / 16), labels int64. The split is a fixed permutation
    (torch.Generator seeded with `seed`): 1438 train / 359 test with the defaults."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return Split(x[train], y[train], x[test], y[test])
