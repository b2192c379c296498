"""Op implementations per backend: reference.py (pure torch oracle), cpp.py, cuda.py, triton.py
(registered torch.library ops with fake kernels and autograd)."""
