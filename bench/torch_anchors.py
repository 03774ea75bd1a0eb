"""PyTorch anchors that need no TensorFlow (the GPU benchmarks import this alone)."""


def torch_log_space_mingru(x, weight, bias):
    """h_t for h_0 = 0, through log-space cumsum / logcumsumexp (the paper's scan)."""
    import torch
    import torch.nn.functional as F

    pre = x @ weight + bias
    k, h_tilde = pre.chunk(2, dim=-1)
    log_z = -F.softplus(-k)
    log_coeffs = -F.softplus(k)
    log_h_tilde = torch.where(h_tilde >= 0, (F.relu(h_tilde) + 0.5).log(), -F.softplus(-h_tilde))
    log_values = log_z + log_h_tilde
    a_star = torch.cumsum(log_coeffs, dim=1)
    return torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=1))
