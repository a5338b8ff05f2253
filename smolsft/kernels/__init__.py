"""CPU training kernels: causal attention as blocked matrix products over the real
tokens (``cpu_bmm``), and PyTorch's fused RMSNorm."""
