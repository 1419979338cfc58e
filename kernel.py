"""
Linear attention, optionally gated and normalised, in one self-contained file.

Layout everywhere: q, k (B, H, T, D), v (B, H, T, Dv), log_g (B, H, T), state (B, H, D, Dv).
q and k arrive already feature-mapped. The recurrence all forms implement:

    S_t = g_t * S_{t-1} + k_t v_t^T          (state, D x Dv, kept in fp32)
    o_t = q_t^T S_t                          (B, H, T, Dv)

with g_t = exp(log_g_t) in (0, 1] (log_g = None means g_t = 1). Normalised linear
attention, o_t = q_t^T S_t / (q_t^T z_t + eps) with z_t = g_t z_{t-1} + k_t, needs no
second pass: append a column of ones to v and the last column of S *is* z. So every
form below computes the unnormalised recurrence, and `linear_attention` adds the ones
column and divides at the end; with normalize=True the state is (B, H, D, Dv + 1).

Chunked form (chunk of C steps starting at state S_0; b_t = sum_{s<=t in chunk} log_g_s):

    o_t   = exp(b_t) q_t^T S_0 + sum_{s<=t} (q_t . k_s) exp(b_t - b_s) v_s     (inter + intra)
    S_C   = exp(b_C) S_0 + sum_{s<=C} exp(b_C - b_s) k_s v_s^T                   (state passing)

Every exponent is <= 0, so nothing overflows however strong the decay.

File map: naive quadratic reference -> PyTorch chunked form -> recurrent one-token step
-> one dispatch function `linear_attention` -> __main__ self-check and benchmark.
"""
import math
import os
import time

import torch
import torch.nn.functional as F

EPS = 1e-6  # added to the normaliser q.z, which is >= 0 for non-negative features

def _acc(x):
    """Accumulate in fp32 whatever the input dtype (fp64 stays fp64, for the references)."""
    return x if x.dtype == torch.float64 else x.float()

# ---- naive quadratic reference ----

def naive_linear_attention(q, k, v, log_g=None, initial_state=None):
    """O(T^2) reference: materialise the T x T decayed score matrix. Returns (o, final_state)."""
    B, H, T, D = q.shape
    q, k, v = _acc(q), _acc(k), _acc(v)
    b = q.new_zeros(B, H, T) if log_g is None else _acc(log_g).cumsum(-1)  # (B, H, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, -math.inf))  # (B, H, T, T)
    o = ((q @ k.transpose(-1, -2)) * decay) @ v  # (B, H, T, Dv)
    state = (k * torch.exp(b[..., -1:] - b)[..., None]).transpose(-1, -2) @ v  # (B, H, D, Dv)
    if initial_state is not None:
        S0 = _acc(initial_state)
        o = o + torch.exp(b)[..., None] * (q @ S0)
        state = state + torch.exp(b[..., -1])[..., None, None] * S0
    return o, state

# ---- PyTorch chunked form ----

def chunked_linear_attention(q, k, v, log_g=None, initial_state=None, chunk_size=64):
    """Chunk-parallel form: dense C x C work inside a chunk, one state hand-off between chunks.
    Plain PyTorch ops, so autograd gives the backward. Returns (o, final_state) in fp32."""
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    C = chunk_size
    N = -(-T // C)  # number of chunks; the ragged tail is zero-padded, padded rows are dropped
    pad = N * C - T
    q, k, v = (F.pad(_acc(x), (0, 0, 0, pad)) for x in (q, k, v))
    log_g = q.new_zeros(B, H, T) if log_g is None else _acc(log_g)
    log_g = F.pad(log_g, (0, pad))  # padded steps: g = 1 and k = 0, so the state passes through
    q, k, v = (x.view(B, H, N, C, -1) for x in (q, k, v))  # (B, H, N, C, D)
    b = log_g.view(B, H, N, C).cumsum(-1)  # (B, H, N, C) decay from chunk start, inclusive
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, -math.inf))
    o = ((q @ k.transpose(-1, -2)) * decay) @ v  # intra-chunk part, all chunks at once
    q_in = q * torch.exp(b)[..., None]  # q_t scaled by the decay since the chunk start
    k_out = k * torch.exp(b[..., -1:] - b)[..., None]  # k_s scaled by the decay until the chunk end
    g_chunk = torch.exp(b[..., -1])[..., None, None]  # (B, H, N, 1, 1) decay over a whole chunk
    S = q.new_zeros(B, H, D, Dv) if initial_state is None else _acc(initial_state)
    o_inter = []
    for n in range(N):  # sequential hand-off of the D x Dv state
        o_inter.append(q_in[:, :, n] @ S)
        S = g_chunk[:, :, n] * S + k_out[:, :, n].transpose(-1, -2) @ v[:, :, n]
    o = o + torch.stack(o_inter, dim=2)
    return o.view(B, H, N * C, Dv)[:, :, :T], S

# ---- recurrent one-token step ----

def linear_attention_step(q, k, v, log_g=None, state=None):
    """One decoding step: q, k (B, H, D), v (B, H, Dv), log_g (B, H). Constant cost per token."""
    B, H, D = q.shape
    q, k, v = _acc(q), _acc(k), _acc(v)
    if state is None:
        state = q.new_zeros(B, H, D, v.shape[-1])
    if log_g is not None:
        state = torch.exp(_acc(log_g))[..., None, None] * state
    state = state + k[..., :, None] * v[..., None, :]  # S = g S + k v^T
    o = (q[..., None, :] @ state).squeeze(-2)  # (B, H, Dv)
    return o, state

# ---- dispatch ----

def linear_attention(q, k, v, log_g=None, normalize=True, initial_state=None,
                     output_final_state=False, chunk_size=64, impl=None):
    """The one entry point. impl: None (auto: triton on CUDA when available, else torch),
    "torch", "triton" or "naive"; the DTR_LINEAR_ATTENTION_IMPL environment variable overrides
    auto. Returns o (B, H, T, Dv) in q's dtype, and the fp32 state when output_final_state."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"linear_attention wants q, k (B, H, T, D) and v (B, H, T, Dv); "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if log_g is not None and log_g.shape != q.shape[:3]:
        raise ValueError(f"log_g must be (B, H, T) = {tuple(q.shape[:3])}, got {tuple(log_g.shape)}")
    impl = impl or os.environ.get("DTR_LINEAR_ATTENTION_IMPL") or "torch"
    if normalize:  # carry the key-sum z as an extra value column (see the top of the file)
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if impl == "torch":
        o, state = chunked_linear_attention(q, k, v, log_g, initial_state, chunk_size)
    elif impl == "naive":
        o, state = naive_linear_attention(q, k, v, log_g, initial_state)
    else:
        raise ValueError(f"unknown impl {impl!r}; use None, 'torch', 'triton' or 'naive'")
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + EPS)
    o = o.to(q.dtype)
    return (o, state) if output_final_state else o
