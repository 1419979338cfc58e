"""
Linear attention, optionally gated and normalised, and the gated delta rule, in one self-contained file.

Layout everywhere: q, k (B, H, T, D), v (B, H, T, Dv), log_g (B, H, T), state (B, H, D, Dv).
q and k arrive already feature-mapped. The recurrence every linear-attention form implements:

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

Backward, with dS the gradient of the loss w.r.t. the state at the chunk end, walking the
chunks in reverse (D_ts = exp(b_t - b_s) for s <= t, else 0; dA_ts = (do_t . v_s) D_ts):

    dq_t  = sum_{s<=t} dA_ts k_s + exp(b_t) S_0 do_t                          (= S_t do_t)
    dk_s  = sum_{t>=s} dA_ts q_t + exp(b_C - b_s) dS v_s
    dv_s  = sum_{t>=s} (q_t . k_s) D_ts do_t + exp(b_C - b_s) dS^T k_s
    dS_0  = exp(b_C) dS + sum_t exp(b_t) q_t do_t^T                            (reverse state passing)

Gate: with B_t = cumsum(log_g) over the whole sequence, every log_g enters only through
exp(B_t - B_s) (query t, key s) or exp(B_T - B_s) (final state). Moving B_t by eps scales
the terms where t is the query up and those where t is the key down, so
dL/dB_t = q_t . dq_t - k_t . dk_t (+ <S_T, dS_T> at t = T), and dlog_g_t = sum_{t'>=t} dL/dB_t'.

Gated delta rule (Gated DeltaNet, arXiv 2412.06464; the caller L2-normalises k, which keeps the
state stable; the scale of q only scales o):

    S_t = g_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t,   beta_t in (0, 1)

i.e. S_t = g_t S_{t-1} + k_t u_t^T with new values u_t = beta_t (v_t - g_t S_{t-1}^T k_t). In a chunk
the u's solve (I + A) u = beta v - beta exp(b) K S_0, A_ts = beta_t exp(b_t - b_s) k_t.k_s for s < t:
one inverse X = (I + A)^-1 gives u = U' - W S_0 with U' = X beta v, W = X beta exp(b) K (the WY/UT
form), and the hand-off is S_C = exp(b_C) S_0 + K_C^T u, where K_C's rows are exp(b_C - b_s) k_s.

File map: naive quadratic reference -> PyTorch chunked form -> recurrent one-token step
-> Triton kernels -> autograd wrapper -> one dispatch function `linear_attention` -> gated delta
rule (naive loop, chunked, step, `gated_delta_rule`; PyTorch only) -> __main__ self-check and benchmark.
"""
import argparse
import math
import os
import statistics
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

def _chunks(C, log_g, *xs):
    """Cut the time axis into chunks of C: each x (B, H, T, d) -> (B, H, N, C, d), the ragged tail
    zero-padded (padded steps have g = 1 and k = 0: the state passes through; their outputs are
    dropped). Also b (B, H, N, C), the decay since the chunk start, inclusive, and
    decay (B, H, N, C, C) = exp(b_t - b_s) for s <= t, else 0."""
    pad = -log_g.shape[-1] % C
    if pad:  # only when needed: F.pad copies
        log_g, xs = F.pad(log_g, (0, pad)), [F.pad(x, (0, 0, 0, pad)) for x in xs]
    b = log_g.unflatten(-1, (-1, C)).cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=b.device).tril()
    decay = torch.exp((b[..., :, None] - b[..., None, :]).masked_fill(~causal, -math.inf))
    return [x.unflatten(2, (-1, C)) for x in xs], b, decay

def chunked_linear_attention(q, k, v, log_g=None, initial_state=None, chunk_size=64):
    """Chunk-parallel form: dense C x C work inside a chunk, one state hand-off between chunks.
    Plain PyTorch ops, so autograd gives the backward. Returns (o, final_state) in fp32."""
    (B, H, T, D), Dv = q.shape, v.shape[-1]
    q, k, v = _acc(q), _acc(k), _acc(v)
    log_g = q.new_zeros(B, H, T) if log_g is None else _acc(log_g)
    (q, k, v), b, decay = _chunks(chunk_size, log_g, q, k, v)  # (B, H, N, C, D)
    o = ((q @ k.transpose(-1, -2)) * decay) @ v  # intra-chunk part, all chunks at once
    # State passing. The per-chunk increments k_out^T v are one batched matmul; only the cheap
    # D x Dv update S_{n+1} = g_n S_n + dS_n is a Python loop (one matmul per chunk is slow on CPU).
    k_out = k * torch.exp(b[..., -1:] - b)[..., None]  # k_s scaled by the decay until the chunk end
    dS = k_out.transpose(-1, -2) @ v  # (B, H, N, D, Dv)
    g_chunk = torch.exp(b[..., -1])[..., None, None]  # (B, H, N, 1, 1) decay over a whole chunk
    S = q.new_zeros(B, H, D, Dv) if initial_state is None else _acc(initial_state)
    S_in = []  # the state entering each chunk
    for dS_n, g_n in zip(dS.unbind(2), g_chunk.unbind(2)):
        S_in.append(S)
        S = g_n * S + dS_n
    q_in = q * torch.exp(b)[..., None]  # q_t scaled by the decay since the chunk start
    o = o + q_in @ torch.stack(S_in, dim=2)  # inter-chunk part, (B, H, N, C, Dv)
    return o.flatten(2, 3)[:, :, :T], S

# ---- recurrent one-token step ----

def linear_attention_step(q, k, v, log_g=None, state=None, normalize=True):
    """One decoding step: q, k (B, H, D), v (B, H, Dv), log_g (B, H). Constant cost per token.
    Same conventions as linear_attention: returns (o (B, H, Dv), state), fp32."""
    B, H, D = q.shape
    q, k, v = _acc(q), _acc(k), _acc(v)
    if normalize:  # the ones column carries the normaliser, as in linear_attention
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if state is None:
        state = q.new_zeros(B, H, D, v.shape[-1])
    if log_g is not None:
        state = torch.exp(_acc(log_g))[..., None, None] * state
    state = state + k[..., :, None] * v[..., None, :]  # S = g S + k v^T
    o = (q[..., None, :] @ state).squeeze(-2)  # (B, H, Dv)
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + EPS)
    return o, state

# ---- Triton kernels ----
# A program owns one (batch, head) and BV value columns, and walks the chunks in order with
# its D x BV slice of the state in registers (fp32), like the PyTorch loop above. Value
# columns never mix in the recurrence, and the split keeps a program's tiles inside shared
# memory at D = 128; D is not split (q . k needs whole rows). D and Dv are padded to powers
# of two and masked. The backward recomputes the chunk states rather than storing T / C of
# them, which would cost as much memory as the activations. dq and dk sum over value columns:
# each block writes its share, the wrapper adds them and forms dlog_g from whole rows.

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # kernel.py stays importable, and the torch path usable, without triton
    HAS_TRITON = False

if HAS_TRITON:

    @triton.jit
    def _load_tile(p, rows, cols, R, Cn):
        """rows x cols tile of a row-major (R, Cn) matrix, zero outside it, as fp32."""
        mask = (rows[:, None] < R) & (cols[None, :] < Cn)
        return tl.load(p + rows[:, None] * Cn + cols[None, :], mask=mask, other=0.).to(tl.float32)

    @triton.jit
    def _store_tile(p, x, rows, cols, R, Cn):
        mask = (rows[:, None] < R) & (cols[None, :] < Cn)
        tl.store(p + rows[:, None] * Cn + cols[None, :], x.to(p.dtype.element_ty), mask=mask)

    @triton.jit
    def _chunk_decay(p_g, t, T, BT: tl.constexpr, HAS_G: tl.constexpr):
        """b (BT,): decay since the chunk start; b_C: over the whole chunk; D (BT, BT):
        exp(b_t - b_s) for s <= t, else 0. Rows past T have log_g = 0: the state passes through."""
        if HAS_G:
            b_g = tl.load(p_g + t, mask=t < T, other=0.).to(tl.float32)
        else:
            b_g = tl.zeros([BT], dtype=tl.float32)
        b_b = tl.cumsum(b_g, 0)
        i = tl.arange(0, BT)
        # only ever exponentiate b_t - b_s with s <= t (<= 0); the rest is exp(-inf) = 0
        b_D = tl.exp(tl.where(i[:, None] >= i[None, :], b_b[:, None] - b_b[None, :], float("-inf")))
        return b_b, tl.sum(b_g, 0), b_D

    @triton.jit
    def _fwd_kernel(q, k, v, g, h0, o, ht, T, D: tl.constexpr, DV: tl.constexpr,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    HAS_G: tl.constexpr, HAS_H0: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        q, k, v, o, g = q + bh * T * D, k + bh * T * D, v + bh * T * DV, o + bh * T * DV, g + bh * T
        ik, it = tl.arange(0, BK), tl.arange(0, BT)
        iv = tl.program_id(1) * BV + tl.arange(0, BV)  # this program's value columns
        # (BK, BV) running state S
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            b_h = _load_tile(h0 + bh * D * DV, ik, iv, D, DV)
        for n in range(tl.cdiv(T, BT)):
            t = n * BT + it
            b_b, b_C, b_D = _chunk_decay(g, t, T, BT, HAS_G)
            # (BT, BK), (BT, BK), (BT, BV) tiles of this chunk
            b_q, b_k, b_v = _load_tile(q, t, ik, T, D), _load_tile(k, t, ik, T, D), _load_tile(v, t, iv, T, DV)
            # (BT, BT) decayed causal scores -> (BT, BV) intra + inter output
            b_A = tl.dot(b_q, tl.trans(b_k)) * b_D
            b_o = tl.dot(b_A, b_v) + tl.dot(b_q * tl.exp(b_b)[:, None], b_h)
            _store_tile(o, b_o, t, iv, T, DV)
            # state passing: S <- exp(b_C) S + sum_s exp(b_C - b_s) k_s v_s^T
            b_h = b_h * tl.exp(b_C) + tl.dot(tl.trans(b_k * tl.exp(b_C - b_b)[:, None]), b_v)
        _store_tile(ht + bh * D * DV, b_h, ik, iv, D, DV)

    @triton.jit
    def _bwd_dq_kernel(k, v, g, h0, do, dq, T, D: tl.constexpr, DV: tl.constexpr,
                       BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                       HAS_G: tl.constexpr, HAS_H0: tl.constexpr):
        """Forward walk that recomputes the states: this value block's share of dq."""
        bh = tl.program_id(0).to(tl.int64)
        k, v, g, do = k + bh * T * D, v + bh * T * DV, g + bh * T, do + bh * T * DV
        dq = dq + (tl.program_id(1) * tl.num_programs(0) + bh) * T * D  # (NV, B * H, T, D) shares
        ik, it = tl.arange(0, BK), tl.arange(0, BT)
        iv = tl.program_id(1) * BV + tl.arange(0, BV)
        # (BK, BV) state entering the chunk
        b_h = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_H0:
            b_h = _load_tile(h0 + bh * D * DV, ik, iv, D, DV)
        for n in range(tl.cdiv(T, BT)):
            t = n * BT + it
            b_b, b_C, b_D = _chunk_decay(g, t, T, BT, HAS_G)
            b_k = _load_tile(k, t, ik, T, D)
            b_v, b_do = _load_tile(v, t, iv, T, DV), _load_tile(do, t, iv, T, DV)
            # (BT, BT) dA_ts = (do_t . v_s) D_ts -> (BT, BK) dq = dA k + exp(b) do S^T
            b_dA = tl.dot(b_do, tl.trans(b_v)) * b_D
            b_dq = tl.dot(b_dA, b_k) + tl.dot(b_do, tl.trans(b_h)) * tl.exp(b_b)[:, None]
            _store_tile(dq, b_dq, t, ik, T, D)
            b_h = b_h * tl.exp(b_C) + tl.dot(tl.trans(b_k * tl.exp(b_C - b_b)[:, None]), b_v)

    @triton.jit
    def _bwd_dkv_kernel(q, k, v, g, do, dht, dk, dv, dh0, T, D: tl.constexpr,
                        DV: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                        HAS_G: tl.constexpr, HAS_H0: tl.constexpr, HAS_DHT: tl.constexpr):
        """Reverse walk carrying dS: this value block's dv, dS_0 and share of dk."""
        bh = tl.program_id(0).to(tl.int64)
        q, k, v, g = q + bh * T * D, k + bh * T * D, v + bh * T * DV, g + bh * T
        do, dv = do + bh * T * DV, dv + bh * T * DV
        dk = dk + (tl.program_id(1) * tl.num_programs(0) + bh) * T * D  # (NV, B * H, T, D) shares
        ik, it = tl.arange(0, BK), tl.arange(0, BT)
        iv = tl.program_id(1) * BV + tl.arange(0, BV)
        # (BK, BV) gradient w.r.t. the state at the end of the current chunk
        b_dh = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_DHT:
            b_dh = _load_tile(dht + bh * D * DV, ik, iv, D, DV)
        NT = tl.cdiv(T, BT)
        for i in range(NT):
            t = (NT - 1 - i) * BT + it
            b_b, b_C, b_D = _chunk_decay(g, t, T, BT, HAS_G)
            b_q, b_k = _load_tile(q, t, ik, T, D), _load_tile(k, t, ik, T, D)
            b_v, b_do = _load_tile(v, t, iv, T, DV), _load_tile(do, t, iv, T, DV)
            # (BT, BT) scores A_ts and their gradient dA_ts, indexed [query t, key s]
            b_A = tl.dot(b_q, tl.trans(b_k)) * b_D
            b_dA = tl.dot(b_do, tl.trans(b_v)) * b_D
            # (BT, 1) decay from each key to the chunk end, where dS takes over
            b_kd = tl.exp(b_C - b_b)[:, None]
            b_dk = tl.dot(tl.trans(b_dA), b_q) + tl.dot(b_v, tl.trans(b_dh)) * b_kd  # (BT, BK)
            b_dv = tl.dot(tl.trans(b_A), b_do) + tl.dot(b_k, b_dh) * b_kd  # (BT, BV)
            _store_tile(dk, b_dk, t, ik, T, D)
            _store_tile(dv, b_dv, t, iv, T, DV)
            # reverse state passing: dS <- exp(b_C) dS + sum_t exp(b_t) q_t do_t^T
            b_dh = b_dh * tl.exp(b_C) + tl.dot(tl.trans(b_q * tl.exp(b_b)[:, None]), b_do)
        if HAS_H0:
            _store_tile(dh0 + bh * D * DV, b_dh, ik, iv, D, DV)

# ---- autograd wrapper ----

class TritonLinearAttention(torch.autograd.Function):
    """(o fp32, final state fp32) = chunked linear attention, forward and backward in Triton."""

    @staticmethod
    def forward(ctx, q, k, v, log_g, initial_state, chunk_size):
        B, H, T, D = q.shape
        Dv = v.shape[-1]
        if not HAS_TRITON:
            raise RuntimeError("impl='triton' needs the triton package (pip install triton)")
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("impl='triton' on CPU tensors runs only with TRITON_INTERPRET=1 set "
                               "before triton is imported; use impl='torch' on CPU")
        if D > 128:  # whole rows of q and k live in one program, with a D x BV slice of the state
            raise ValueError(f"impl='triton' supports feature dims D up to 128, got D={D}; use impl='torch'")
        if chunk_size < 16 or chunk_size & (chunk_size - 1):
            raise ValueError(f"impl='triton' wants a power-of-two chunk_size >= 16, got {chunk_size}")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        log_g, initial_state = (x.contiguous() if x is not None else None for x in (log_g, initial_state))
        g, h0 = (x if x is not None else q for x in (log_g, initial_state))  # q: unused placeholder
        o = q.new_empty(B, H, T, Dv, dtype=torch.float32)
        ht = q.new_empty(B, H, D, Dv, dtype=torch.float32)
        ctx.meta = dict(D=D, DV=Dv, BT=chunk_size, BK=max(16, triton.next_power_of_2(D)),
                        BV=min(64, max(16, triton.next_power_of_2(Dv))), HAS_G=log_g is not None,
                        HAS_H0=initial_state is not None,
                        num_stages=1)  # no multi-buffered loads: at D = 128 they overflow shared memory
        ctx.grid = (B * H, triton.cdiv(Dv, ctx.meta["BV"]))  # (batch x head, value block)
        _fwd_kernel[ctx.grid](q, k, v, g, h0, o, ht, T, **ctx.meta)
        ctx.save_for_backward(q, k, v, log_g, initial_state, ht)
        ctx.set_materialize_grads(False)  # dht stays None when the final state is unused
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, log_g, initial_state, ht = ctx.saved_tensors
        B, H, T, D = q.shape
        NV = ctx.grid[1]
        do = q.new_zeros(B, H, T, v.shape[-1], dtype=torch.float32) if do is None else do.float().contiguous()
        g, h0 = (x if x is not None else q for x in (log_g, initial_state))
        dht_ = dht.float().contiguous() if dht is not None else q
        dq = q.new_empty(NV, B, H, T, D, dtype=torch.float32)  # one share per value block
        dk = torch.empty_like(dq)
        dv = torch.empty_like(v)
        dh0 = torch.empty_like(initial_state) if initial_state is not None else q
        _bwd_dq_kernel[ctx.grid](k, v, g, h0, do, dq, T, **ctx.meta)
        _bwd_dkv_kernel[ctx.grid](q, k, v, g, do, dht_, dk, dv, dh0, T, HAS_DHT=dht is not None, **ctx.meta)
        dq, dk = dq.sum(0), dk.sum(0)
        dlog_g = None
        if log_g is not None:  # dL/dB_t = q_t . dq_t - k_t . dk_t (+ <S_T, dS_T>), summed from t on
            dB = (q.float() * dq).sum(-1) - (k.float() * dk).sum(-1)  # (B, H, T)
            dlog_g = dB.flip(-1).cumsum(-1).flip(-1)
            if dht is not None:
                dlog_g = dlog_g + (ht * dht.float()).sum((-2, -1))[..., None]
            dlog_g = dlog_g.to(log_g.dtype)
        return (dq.to(q.dtype), dk.to(k.dtype), dv, dlog_g,
                dh0 if initial_state is not None else None, None)

# ---- dispatch ----

def _check_shapes(fn, q, k, v, **per_step):
    """q, k (B, H, T, D), v (B, H, T, Dv), and each of per_step (B, H, T) or None; else ValueError."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or any(
            x is not None and x.shape != q.shape[:3] for x in per_step.values()):
        got = ", ".join(f"{n} {None if x is None else tuple(x.shape)}" for n, x in dict(q=q, k=k, v=v, **per_step).items())
        raise ValueError(f"{fn} wants q, k (B, H, T, D), v (B, H, T, Dv), {' and '.join(per_step)} (B, H, T); got {got}")

def linear_attention(q, k, v, log_g=None, normalize=True, initial_state=None,
                     output_final_state=False, chunk_size=64, impl=None):
    """The one entry point. impl: None (auto: triton on CUDA for D <= 128 when installed, else torch),
    "torch", "triton" or "naive"; the DTR_LINEAR_ATTENTION_IMPL environment variable overrides
    auto. Returns o (B, H, T, Dv) in q's dtype, and the fp32 state when output_final_state."""
    _check_shapes("linear_attention", q, k, v, log_g=log_g)
    triton_fits = q.is_cuda and HAS_TRITON and q.shape[-1] <= 128  # wider features: the torch form
    impl = impl or os.environ.get("DTR_LINEAR_ATTENTION_IMPL") or ("triton" if triton_fits else "torch")
    if normalize:  # carry the key-sum z as an extra value column (see the top of the file)
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if impl == "torch":
        o, state = chunked_linear_attention(q, k, v, log_g, initial_state, chunk_size)
    elif impl == "triton":
        o, state = TritonLinearAttention.apply(q, k, v, log_g, initial_state, chunk_size)
    elif impl == "naive":
        o, state = naive_linear_attention(q, k, v, log_g, initial_state)
    else:
        raise ValueError(f"unknown impl {impl!r}; use None, 'torch', 'triton' or 'naive'")
    if normalize:
        o = o[..., :-1] / (o[..., -1:] + EPS)
    o = o.to(q.dtype)
    return (o, state) if output_final_state else o

# ---- gated delta rule: naive loop, chunked form, recurrent step, dispatch ----

def naive_gated_delta_rule(q, k, v, beta, log_g=None, initial_state=None):
    """Token-by-token reference: the recurrence as written at the top, D x D matrix and all. (o, S)"""
    B, H, T, D = q.shape
    q, k, v, beta = _acc(q), _acc(k), _acc(v), _acc(beta)
    g = torch.ones_like(beta) if log_g is None else torch.exp(_acc(log_g))  # (B, H, T)
    S = q.new_zeros(B, H, D, v.shape[-1]) if initial_state is None else _acc(initial_state)
    eye = torch.eye(D, dtype=q.dtype, device=q.device)
    o = []
    for t in range(T):
        # (B, H, D, 1), (B, H, 1, Dv), (B, H, 1, 1)
        k_t, v_t, b_t = k[:, :, t, :, None], v[:, :, t, None, :], beta[:, :, t, None, None]
        S = g[:, :, t, None, None] * (eye - b_t * k_t @ k_t.mT) @ S + b_t * k_t @ v_t
        o.append((q[:, :, t, None, :] @ S).squeeze(-2))  # o_t = S_t^T q_t, (B, H, Dv)
    return torch.stack(o, dim=2), S

class UnitLowerInverse(torch.autograd.Function):
    """X = (I + A)^-1 for the strictly lower part of A (..., C, C); its diagonal and upper part are
    ignored. One triangular solve forward; backward is two matmuls, dA = -(X^T dX X^T) strictly
    lower, where autograd through solve_triangular would solve again."""

    @staticmethod
    def forward(ctx, A):
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
        X = torch.linalg.solve_triangular(A, eye, upper=False, unitriangular=True)
        ctx.save_for_backward(X)
        return X

    @staticmethod
    def backward(ctx, dX):
        X, = ctx.saved_tensors
        return -(X.mT @ dX @ X.mT).tril(-1)

def chunked_gated_delta_rule(q, k, v, beta, log_g=None, initial_state=None, chunk_size=64):
    """Chunk-parallel form (top of the file): one inverse (I + A)^-1 for all chunks at once, then
    the state hand-off chunk by chunk. Plain PyTorch, so autograd gives the rest of the backward.
    Returns fp32 (o, S)."""
    (B, H, T, D), Dv = q.shape, v.shape[-1]
    q, k, v, beta = _acc(q), _acc(k), _acc(v), _acc(beta)
    log_g = beta.new_zeros(B, H, T) if log_g is None else _acc(log_g)
    # padded steps also have beta = 0: they write nothing and forget nothing
    (q, k, v, beta), b, decay = _chunks(chunk_size, log_g, q, k, v, beta[..., None])  # (B, H, N, C, D)
    # A_ts = beta_t exp(b_t - b_s) k_t.k_s, s < t (UnitLowerInverse reads only the strict lower part)
    X = UnitLowerInverse.apply(beta * (k @ k.mT) * decay)  # (B, H, N, C, C)
    u = X @ (beta * v)  # U': the new values if the chunk started from S = 0
    w = X @ (beta * torch.exp(b)[..., None] * k)  # W: how they change with the chunk's start state
    k_out = (k * torch.exp(b[..., -1:] - b)[..., None]).mT  # (B, H, N, D, C) k_s decayed to the chunk end
    g_out = torch.exp(b[..., -1])[..., None, None]  # (B, H, N, 1, 1) the whole chunk's decay
    S = q.new_zeros(B, H, D, Dv) if initial_state is None else _acc(initial_state)
    S_in, u_true = [], []  # per chunk: the state entering it, and its true new values
    for u_n, w_n, k_n, g_n in zip(u.unbind(2), w.unbind(2), k_out.unbind(2), g_out.unbind(2)):
        S_in.append(S)
        u_true.append(u_n - w_n @ S)  # u_t = beta_t (v_t - g_t S_{t-1}^T k_t), (B, H, C, Dv)
        S = g_n * S + k_n @ u_true[-1]
    S_in, u = torch.stack(S_in, dim=2), torch.stack(u_true, dim=2)  # (B, H, N, D, Dv), (B, H, N, C, Dv)
    o = ((q @ k.mT) * decay) @ u + (q * torch.exp(b)[..., None]) @ S_in  # intra + inter, (B, H, N, C, Dv)
    return o.flatten(2, 3)[:, :, :T], S

def gated_delta_rule_step(q, k, v, beta, log_g=None, state=None):
    """One decoding step: q, k (B, H, D), v (B, H, Dv), beta, log_g (B, H). Rank-one form, no D x D
    matrix: S = g S + beta k (v - g S^T k)^T. Returns (o (B, H, Dv), state), fp32."""
    q, k, v, beta = _acc(q), _acc(k), _acc(v), _acc(beta)
    state = q.new_zeros(*k.shape, v.shape[-1]) if state is None else _acc(state)  # (B, H, D, Dv)
    if log_g is not None:
        state = torch.exp(_acc(log_g))[..., None, None] * state
    u = beta[..., None] * (v - (k[..., None, :] @ state).squeeze(-2))  # (B, H, Dv) beta x the error of S's answer for k
    state = state + k[..., :, None] * u[..., None, :]
    return (q[..., None, :] @ state).squeeze(-2), state

def gated_delta_rule(q, k, v, beta, log_g=None, initial_state=None, output_final_state=False,
                     chunk_size=64, impl=None):
    """The entry point: q, k (B, H, T, D) (k L2-normalised by the caller), v (B, H, T, Dv), beta,
    log_g (B, H, T). impl: None or "torch" (chunked) or "naive". Returns o (B, H, T, Dv) in q's
    dtype, and the fp32 state (B, H, D, Dv) when output_final_state."""
    _check_shapes("gated_delta_rule", q, k, v, beta=beta, log_g=log_g)
    if impl in (None, "torch"):
        o, state = chunked_gated_delta_rule(q, k, v, beta, log_g, initial_state, chunk_size)
    elif impl == "naive":
        o, state = naive_gated_delta_rule(q, k, v, beta, log_g, initial_state)
    else:
        raise ValueError(f"unknown impl {impl!r} for gated_delta_rule; use None, 'torch' or 'naive'")
    o = o.to(q.dtype)
    return (o, state) if output_final_state else o

# ---- self-check and benchmark ----

def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

def self_check(device):
    """Each usable form vs the fp64 naive reference: output, final state and every gradient."""
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 100, 48  # T not a multiple of the chunk, D and Dv + 1 not powers of two
    x = [torch.rand(B, H, T, D), torch.rand(B, H, T, D), torch.randn(B, H, T, D),
         -torch.rand(B, H, T), torch.randn(B, H, D, D + 1)]  # q, k, v, log_g, S_0
    # gated delta rule: unit k rows (the caller's job; q's too, harmlessly), beta in (0, 1), S_0 (D, Dv)
    y = [F.normalize(x[0] - 0.5, dim=-1), F.normalize(x[1] - 0.5, dim=-1), x[2],
         torch.sigmoid(torch.randn(B, H, T)), x[3], x[4][..., :D]]  # q, k, v, beta, log_g, S_0

    def run(fn, inputs, impl, dtype, dev):
        ins = [t.to(dev, dtype, copy=True).requires_grad_() for t in inputs]
        o, S = fn(*ins[:-1], initial_state=ins[-1], output_final_state=True, chunk_size=32, impl=impl)
        (o.square().sum() + S.square().sum()).backward()
        return [o, S] + [t.grad for t in ins]

    triton_ok = HAS_TRITON and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1")
    checks = [(impl, linear_attention, x, impl, "o state dq dk dv dlog_g dS0")
              for impl in ["torch"] + (["triton"] if triton_ok else [])]
    checks.append(("gdn", gated_delta_rule, y, "torch", "o state dq dk dv dbeta dlog_g dS0"))
    for label, fn, inputs, impl, names in checks:
        ref = run(fn, inputs, "naive", torch.float64, "cpu")
        errs = [_rel(a.cpu(), b) for a, b in zip(run(fn, inputs, impl, torch.float32, device), ref)]
        tol = 5e-3 if impl == "triton" and device.type == "cuda" else 1e-4  # tl.dot uses TF32 on GPU
        print(f"check    {label:6s} fp32 vs fp64 naive, T={T} D={D} | "
              + " ".join(f"{n} {e:.1e}" for n, e in zip(names.split(), errs))
              + f" | {'ok' if max(errs) < tol else 'FAIL'} (tol {tol:g})")
    if not triton_ok:
        print("check    triton skipped: " + ("not installed" if not HAS_TRITON else
              "no CUDA device (run with TRITON_INTERPRET=1 to check it on CPU, slowly)"))

def _time_ms(fn, reps, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up: allocator, Triton compilation
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)

def benchmark(device, max_T, reps, with_fla):
    """Chunked linear attention (gated, normalised) vs causal softmax SDPA vs the naive form."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    impl = "triton" if cuda and HAS_TRITON else "torch"
    B, H, D = 1, 4, 64
    naive_max = 8192 if cuda else 4096  # it materialises several (B, H, T, T) fp32 tensors
    forms = {"chunked": lambda q, k, v, g: linear_attention(q, k, v, g, impl=impl),
             "sdpa": lambda q, k, v, g: F.scaled_dot_product_attention(q, k, v, is_causal=True),
             "naive": lambda q, k, v, g: linear_attention(q, k, v, g, impl="naive")}
    if with_fla and cuda:
        try:  # flash-linear-attention's chunk kernel for the same scalar-gated recurrence, unnormalised
            from fla.ops.simple_gla import chunk_simple_gla
            forms["fla"] = lambda q, k, v, g: chunk_simple_gla(
                *(t.transpose(1, 2) for t in (q, k, v)), g=g.transpose(1, 2), scale=1.0)[0]
        except ImportError:
            pass
    print(f"bench    device {device}, {dtype}, B={B} H={H} D={D}, chunked = impl '{impl}', "
          f"median of {reps}, times in ms; naive only up to T={naive_max}")
    print(f"{'T':>6} | fwd: " + " ".join(f"{n:>8}" for n in forms) + " | fwd+bwd: "
          + " ".join(f"{n:>8}" for n in forms) + " | fwd speed-up vs sdpa")
    rows, T, broken = [], 256, set()
    while T <= max_T:
        torch.manual_seed(0)
        q, k = (torch.rand(B, H, T, D, device=device, dtype=dtype) for _ in range(2))
        v = torch.randn(B, H, T, D, device=device, dtype=dtype)
        g = -0.1 * torch.rand(B, H, T, device=device, dtype=dtype)
        fwd, fwd_bwd = {}, {}
        for name, f in forms.items():
            fwd[name] = fwd_bwd[name] = float("nan")
            if (name == "naive" and T > naive_max) or name in broken:
                continue
            try:
                with torch.no_grad():
                    fwd[name] = _time_ms(lambda: f(q, k, v, g), reps, device)
                ins = [t.detach().requires_grad_() for t in (q, k, v, g)]
                fwd_bwd[name] = _time_ms(lambda: f(*ins).float().sum().backward(), reps, device)
            except RuntimeError as e:  # e.g. a third-party kernel refusing this Triton version
                broken.add(name)
                print(f"bench    {name} dropped: {str(e).splitlines()[0][:160]}")
        rows.append((T, fwd, fwd_bwd))
        print(f"{T:>6} | fwd: " + " ".join(f"{fwd[n]:8.2f}" for n in forms) + " | fwd+bwd: "
              + " ".join(f"{fwd_bwd[n]:8.2f}" for n in forms) + f" | {fwd['sdpa'] / fwd['chunked']:6.1f}x")
        T *= 2
    for i, label in [(1, "forward"), (2, "forward+backward")]:
        # crossover: the shortest T from which chunked stays faster than SDPA
        wins = [r[i]["chunked"] < r[i]["sdpa"] for r in rows]
        cross = next((rows[j][0] for j in range(len(rows)) if all(wins[j:])), None)
        print(f"crossover {label}: chunked beats SDPA " + (f"from T = {cross}" if cross
              else f"nowhere up to T = {rows[-1][0]}"))

def benchmark_gated_delta_rule(device, reps, T=2048):
    """Gated delta rule forward, fp32, at one length: the chunked form vs the token-by-token loops."""
    B, H, D = 1, 4, 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device) for _ in range(3))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    beta, log_g = torch.rand(B, H, T, device=device), -0.1 * torch.rand(B, H, T, device=device)

    def step_loop():  # the naive form without its D x D matrix: decode the sequence token by token
        S = None
        for t in range(T):
            _, S = gated_delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], log_g[:, :, t], S)

    forms = {"chunked": lambda: gated_delta_rule(q, k, v, beta, log_g), "step loop": step_loop,
             "naive": lambda: gated_delta_rule(q, k, v, beta, log_g, impl="naive")}
    with torch.no_grad():
        ms = {name: _time_ms(f, reps, device) for name, f in forms.items()}
    print(f"bench    gated delta rule fwd fp32, B={B} H={H} T={T} D={D}, median of {reps}: "
          + ", ".join(f"{n} {t:.1f} ms ({t / ms['chunked']:.1f}x)" for n, t in ms.items()))

def main():
    parser = argparse.ArgumentParser(description="Linear attention: self-check and benchmark.")
    parser.add_argument("--quick", action="store_true", help="short run: T up to 2048, 3 repeats")
    parser.add_argument("--max-T", type=int, default=16384, help="longest sequence to benchmark")
    parser.add_argument("--reps", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both sides "
                        "(0: torch's default; 1 gives steadier numbers when the cores are shared)")
    parser.add_argument("--fla", action="store_true", help="also time flash-linear-attention's "
                        "chunk_simple_gla on CUDA, if it is importable")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device   {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
          f", torch {torch.__version__}, triton {triton.__version__ if HAS_TRITON else 'not installed'}")
    self_check(device)
    benchmark(device, 2048 if args.quick else args.max_T, 3 if args.quick else args.reps, args.fla)
    benchmark_gated_delta_rule(device, 3 if args.quick else args.reps)

if __name__ == "__main__":
    main()
