"""Dataset loaders returning tensors: the bundled scikit-learn digits, MNIST (IDX files) and
CIFAR-10 (python pickle batches) from a local directory. Each returns a Split
(x_train [N, C, H, W] float in [0, 1], y_train int64, x_test, y_test); nothing is downloaded."""
from .cifar10 import load_cifar10  # noqa: F401
from .digits import load_digits  # noqa: F401
from .mnist import load_mnist  # noqa: F401
from .split import Split  # noqa: F401
