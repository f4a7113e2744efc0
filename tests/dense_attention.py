"""Dense attention under a boolean mask, the float64 oracle of the dynamic-term tests
(test_dynamic.py, test_dynamic_tables.py, test_dynamic_documents.py), and the inputs they share."""
from __future__ import annotations

import torch


def inputs(B=2, Hq=4, Hkv=2, n=80, nq=None, D=16, seed=0):
    """Gaussian q, k, v; q and k scaled by 1.5 so that the chosen sets are well separated."""
    g = torch.Generator().manual_seed(seed)
    nq = n if nq is None else nq
    q = torch.randn(B, Hq, nq, D, generator=g) * 1.5
    k = torch.randn(B, Hkv, n, D, generator=g) * 1.5
    v = torch.randn(B, Hkv, n, D, generator=g)
    return q, k, v


def dense(q, k, v, mask, scale, kv_lens=None):
    """``(out, lse)`` of softmax attention where ``mask`` allows (grouped query heads;
    keys at or past ``kv_lens[b]`` excluded); rows with nothing allowed give 0 and -inf."""
    g = q.shape[1] // k.shape[1]
    kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    if kv_lens is not None:
        keep = torch.arange(k.shape[2]).view(1, -1) < kv_lens.view(-1, 1)
        mask = mask & keep[:, None, None, :]
    s = (scale * q @ kk.transpose(-1, -2)).masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ vv, torch.logsumexp(s, -1)


def rel(a, b):
    a, b = a.detach().double(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_matches_dense(out, lse, leaves, mask, scale, tol, kv_lens=None):
    """``out``/``lse`` (and, through one random upstream gradient, the gradients of the
    ``leaves`` q, k, v) equal float64 dense attention under ``mask`` within ``tol``."""
    q, k, v = leaves
    qd, kd, vd = (x.detach().double().requires_grad_() for x in leaves)
    ref, ref_lse = dense(qd, kd, vd, mask, scale, kv_lens)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (ref * grad.double()).sum().backward()
    assert rel(out, ref) < tol
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite)
    assert float((lse.detach()[finite].double() - ref_lse.detach()[finite]).abs().max()) < tol * 10
    for got, want in ((q.grad, qd.grad), (k.grad, kd.grad), (v.grad, vd.grad)):
        assert rel(got, want) < tol


def count_calls(monkeypatch, **targets):
    """Count calls of ``module.name`` for each ``key=(module, name)``: ``{key: count}``."""
    calls = dict.fromkeys(targets, 0)
    for key, (mod, name) in targets.items():
        real = getattr(mod, name)

        def wrapped(*a, _real=real, _key=key, **kw):
            calls[_key] += 1
            return _real(*a, **kw)
        monkeypatch.setattr(mod, name, wrapped)
    return calls
