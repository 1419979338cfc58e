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

Every exponent is <= 0, so nothing overflows however strong the decay. Only the second line is
sequential: the Triton kernels run it first for every chunk's S_0 (phase 1), then the first line for
all chunks at once (phase 2).

Backward, with dS the gradient of the loss w.r.t. the state at the chunk end (D_ts = exp(b_t - b_s)
for s <= t, else 0; dA_ts = (do_t . v_s) D_ts). Again only the last line is sequential, walking the
chunks in reverse (phase 1); the rest is per chunk, all chunks at once (phase 2):

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

File map: linear attention (naive quadratic reference -> PyTorch chunked form -> recurrent one-token
step -> dispatch `linear_attention`) -> the gated delta rule in the same four forms (PyTorch only)
-> Triton kernels (phase 1: the state pass; phase 2: outputs, and in the backward dq, dk, dv) and
their autograd wrapper, which adds impl="triton" to the dispatch -> __main__ self-check.
The benchmark is experiments/bench_kernel.py.
"""
import math
import os

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

# ---- dispatch: one entry point for every form ----

def _check_shapes(fn, q, k, v, **per_step):
    """q, k (B, H, T, D), v (B, H, T, Dv), and each of per_step (B, H, T) or None; else ValueError."""
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or any(
            x is not None and x.shape != q.shape[:3] for x in per_step.values()):
        got = ", ".join(f"{n} {None if x is None else tuple(x.shape)}" for n, x in dict(q=q, k=k, v=v, **per_step).items())
        raise ValueError(f"{fn} wants q, k (B, H, T, D), v (B, H, T, Dv), {' and '.join(per_step)} (B, H, T); got {got}")

# The chunked forms by impl name, each (q, k, v, log_g, initial_state, chunk_size) -> (o, state) in
# fp32. The Triton section at the bottom of the file adds "triton" when triton is installed.
CHUNKED_FORMS = {"torch": chunked_linear_attention}

def linear_attention(q, k, v, log_g=None, normalize=True, initial_state=None,
                     output_final_state=False, chunk_size=64, impl=None):
    """The one entry point. impl: None (auto: triton on CUDA for D <= 128 when installed, else torch),
    "torch", "triton" or "naive"; the DTR_LINEAR_ATTENTION_IMPL environment variable overrides
    auto. Returns o (B, H, T, Dv) in q's dtype, and the fp32 state when output_final_state."""
    _check_shapes("linear_attention", q, k, v, log_g=log_g)
    triton_fits = q.is_cuda and "triton" in CHUNKED_FORMS and q.shape[-1] <= 128  # wider features: the torch form
    impl = impl or os.environ.get("DTR_LINEAR_ATTENTION_IMPL") or ("triton" if triton_fits else "torch")
    if impl != "naive" and impl not in CHUNKED_FORMS:
        why = "needs the triton package (pip install triton)" if impl == "triton" else "is unknown"
        raise ValueError(f"impl {impl!r} {why}; use None, 'torch', 'triton' or 'naive'")
    if normalize:  # carry the key-sum z as an extra value column (see the top of the file)
        v = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    if impl == "naive":
        o, state = naive_linear_attention(q, k, v, log_g, initial_state)
    else:
        o, state = CHUNKED_FORMS[impl](q, k, v, log_g, initial_state, chunk_size)
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

# ---- Triton kernels: the state pass (phase 1), then every chunk at once (phase 2) ----
# Phase 1 is the only sequential part: one program per (BK rows, BV columns of the state, batch x
# head) walks the chunks and writes the state entering each one. Rows and columns of the state never
# mix in the recurrence, so the blocks are independent and B * H * (D / BK) * (Dv / BV) programs
# share the walk. Phase 2 gives each (block, chunk, batch x head) its own program. The backward runs
# the state pass twice, forward again (storing the T / C states between forward and backward would
# cost as much memory as q) and in reverse for dS, then dq and dk, and dv, for all chunks at once.
# Tiles are powers of two >= 16 (tl.dot's minimum), padded and masked, so D and Dv need not be
# multiples of 16 and T need not be a multiple of the chunk (rows past T load as k = 0, log_g = 0:
# the state passes through). Dots take the inputs' dtype (bf16 on a GPU) and accumulate in fp32;
# the walk carries the state in fp32 and hands phase 2 its per-chunk copies in the inputs' dtype.

try:
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # kernel.py stays importable, and the torch path usable, without triton
    HAS_TRITON = False

if HAS_TRITON:

    @triton.jit
    def _load_tile(p, rows, cols, R, Cn):
        """rows x cols tile of a row-major (R, Cn) matrix, zero outside it, in its own dtype."""
        mask = (rows[:, None] < R) & (cols[None, :] < Cn)
        return tl.load(p + rows[:, None] * Cn + cols[None, :], mask=mask, other=0.)

    @triton.jit
    def _store_tile(p, x, rows, cols, R, Cn):
        mask = (rows[:, None] < R) & (cols[None, :] < Cn)
        tl.store(p + rows[:, None] * Cn + cols[None, :], x.to(p.dtype.element_ty), mask=mask)

    @triton.jit
    def _chunk_cumsum(p_g, t, T, BT: tl.constexpr, HAS_G: tl.constexpr):
        """b (BT,): the decay since the chunk start, inclusive; b_C: over the whole chunk."""
        if HAS_G:
            b_g = tl.load(p_g + t, mask=t < T, other=0.).to(tl.float32)
        else:
            b_g = tl.zeros([BT], dtype=tl.float32)
        return tl.cumsum(b_g, 0), tl.sum(b_g, 0)

    @triton.jit
    def _decay_matrix(b_b, BT: tl.constexpr):
        """(BT, BT) D_ts = exp(b_t - b_s) for s <= t, else 0: only exponents <= 0 are ever taken."""
        i = tl.arange(0, BT)
        return tl.exp(tl.where(i[:, None] >= i[None, :], b_b[:, None] - b_b[None, :], float("-inf")))

    @triton.jit
    def _state_pass_kernel(x, y, g, s0, h, s_out, T, D: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                           BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr, HAS_S0: tl.constexpr,
                           REVERSE: tl.constexpr):
        """Phase 1. Forward (x = k, y = v): h[n] = the state entering chunk n, then
        S <- exp(b_C) S + sum_s exp(b_C - b_s) k_s v_s^T; s_out = S_T. Reverse (x = q, y = do, s0 = dS_T):
        h[n] = dS at chunk n's end, then dS <- exp(b_C) dS + sum_t exp(b_t) q_t do_t^T; s_out = dS_0."""
        i_k, i_v, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        NT = tl.cdiv(T, BT)
        x, y, g, h = x + bh * T * D, y + bh * T * DV, g + bh * T, h + bh * NT * D * DV
        ik, iv, it = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, BT)
        # [BK, BV] this program's block of the state, carried in fp32
        b_s = tl.zeros([BK, BV], dtype=tl.float32)
        if HAS_S0:
            b_s = _load_tile(s0 + bh * D * DV, ik, iv, D, DV).to(tl.float32)
        for i in range(NT):
            n = NT - 1 - i if REVERSE else i
            t = n * BT + it
            _store_tile(h + n * D * DV, b_s, ik, iv, D, DV)
            b_b, b_C = _chunk_cumsum(g, t, T, BT, HAS_G)
            # [BT, BK], [BT, BV]
            b_x, b_y = _load_tile(x, t, ik, T, D), _load_tile(y, t, iv, T, DV)
            # each row's decay: a key's to the chunk end (forward), a query's from its start (reverse)
            b_w = tl.exp(b_b) if REVERSE else tl.exp(b_C - b_b)
            b_s = b_s * tl.exp(b_C) + tl.dot(tl.trans((b_x * b_w[:, None]).to(b_x.dtype)), b_y)
        _store_tile(s_out + bh * D * DV, b_s, ik, iv, D, DV)

    @triton.jit
    def _output_kernel(q, k, v, g, h, o, T, D: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                       BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr):
        """Phase 2, chunk n, value block i_v: o = (q k^T * D) v + exp(b) q h[n] (intra + inter)."""
        i_v, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        q, k, v, o, g = q + bh * T * D, k + bh * T * D, v + bh * T * DV, o + bh * T * DV, g + bh * T
        h = h + (bh * tl.cdiv(T, BT) + n) * D * DV
        t, iv = n * BT + tl.arange(0, BT), i_v * BV + tl.arange(0, BV)
        b_b, _ = _chunk_cumsum(g, t, T, BT, HAS_G)
        b_A = tl.zeros([BT, BT], dtype=tl.float32)
        b_o = tl.zeros([BT, BV], dtype=tl.float32)
        for i_k in range(tl.cdiv(D, BK)):  # q . k and q h sum over all of D, a block at a time
            ik = i_k * BK + tl.arange(0, BK)
            # [BT, BK], [BT, BK], [BK, BV]
            b_q, b_k, b_h = _load_tile(q, t, ik, T, D), _load_tile(k, t, ik, T, D), _load_tile(h, ik, iv, D, DV)
            b_A += tl.dot(b_q, tl.trans(b_k))
            b_o += tl.dot(b_q, b_h.to(b_q.dtype))
        # [BT, BV]
        b_v = _load_tile(v, t, iv, T, DV)
        b_o = b_o * tl.exp(b_b)[:, None] + tl.dot((b_A * _decay_matrix(b_b, BT)).to(b_v.dtype), b_v)
        _store_tile(o, b_o, t, iv, T, DV)

    @triton.jit
    def _dqk_kernel(q, k, v, g, h, do, dh, dq, dk, dB, T, D: tl.constexpr, DV: tl.constexpr,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr):
        """Phase 2 of the backward, chunk n, feature block i_k: dq = dA k + exp(b) do h[n]^T and
        dk = dA^T q + exp(b_C - b) v dh[n]^T with dA = (do v^T) * D; and this block's share of
        dL/dB_t = q_t . dq_t - k_t . dk_t."""
        i_k, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        q, k, v, g, do = q + bh * T * D, k + bh * T * D, v + bh * T * DV, g + bh * T, do + bh * T * DV
        dq, dk, dB = dq + bh * T * D, dk + bh * T * D, dB + (i_k * tl.num_programs(2) + bh) * T
        h, dh = h + (bh * tl.cdiv(T, BT) + n) * D * DV, dh + (bh * tl.cdiv(T, BT) + n) * D * DV
        t, ik = n * BT + tl.arange(0, BT), i_k * BK + tl.arange(0, BK)
        b_b, b_C = _chunk_cumsum(g, t, T, BT, HAS_G)
        b_dA = tl.zeros([BT, BT], dtype=tl.float32)
        b_dq = tl.zeros([BT, BK], dtype=tl.float32)
        b_dk = tl.zeros([BT, BK], dtype=tl.float32)
        for i_v in range(tl.cdiv(DV, BV)):  # do . v, do h^T and v dh^T sum over all of Dv
            iv = i_v * BV + tl.arange(0, BV)
            # [BT, BV], [BT, BV]
            b_v, b_do = _load_tile(v, t, iv, T, DV), _load_tile(do, t, iv, T, DV)
            # [BK, BV] the state entering the chunk, and the loss's gradient w.r.t. the state at its end
            b_h, b_dh = _load_tile(h, ik, iv, D, DV), _load_tile(dh, ik, iv, D, DV)
            b_dA += tl.dot(b_do, tl.trans(b_v))
            b_dq += tl.dot(b_do, tl.trans(b_h.to(b_do.dtype)))
            b_dk += tl.dot(b_v, tl.trans(b_dh.to(b_v.dtype)))
        # [BT, BK], [BT, BK]
        b_q, b_k = _load_tile(q, t, ik, T, D), _load_tile(k, t, ik, T, D)
        b_dA = (b_dA * _decay_matrix(b_b, BT)).to(b_q.dtype)  # [query t, key s]
        b_dq = b_dq * tl.exp(b_b)[:, None] + tl.dot(b_dA, b_k)
        b_dk = b_dk * tl.exp(b_C - b_b)[:, None] + tl.dot(tl.trans(b_dA), b_q)
        _store_tile(dq, b_dq, t, ik, T, D)
        _store_tile(dk, b_dk, t, ik, T, D)
        if HAS_G:  # the wrapper adds the feature blocks' shares and sums over t' >= t
            tl.store(dB + t, tl.sum(b_q * b_dq - b_k * b_dk, 1), mask=t < T)

    @triton.jit
    def _dv_kernel(q, k, g, do, dh, dv, T, D: tl.constexpr, DV: tl.constexpr, BT: tl.constexpr,
                   BK: tl.constexpr, BV: tl.constexpr, HAS_G: tl.constexpr):
        """Phase 2 of the backward, chunk n, value block i_v: dv = (q k^T * D)^T do + exp(b_C - b) k dh[n]."""
        i_v, n, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        q, k, g, do, dv = q + bh * T * D, k + bh * T * D, g + bh * T, do + bh * T * DV, dv + bh * T * DV
        dh = dh + (bh * tl.cdiv(T, BT) + n) * D * DV
        t, iv = n * BT + tl.arange(0, BT), i_v * BV + tl.arange(0, BV)
        b_b, b_C = _chunk_cumsum(g, t, T, BT, HAS_G)
        b_At = tl.zeros([BT, BT], dtype=tl.float32)  # the scores transposed: [key s, query t]
        b_dv = tl.zeros([BT, BV], dtype=tl.float32)
        for i_k in range(tl.cdiv(D, BK)):
            ik = i_k * BK + tl.arange(0, BK)
            # [BT, BK], [BT, BK], [BK, BV]
            b_q, b_k, b_dh = _load_tile(q, t, ik, T, D), _load_tile(k, t, ik, T, D), _load_tile(dh, ik, iv, D, DV)
            b_At += tl.dot(b_k, tl.trans(b_q))
            b_dv += tl.dot(b_k, b_dh.to(b_k.dtype))
        # [BT, BV]
        b_do = _load_tile(do, t, iv, T, DV)
        b_At = (b_At * tl.trans(_decay_matrix(b_b, BT))).to(b_do.dtype)
        b_dv = b_dv * tl.exp(b_C - b_b)[:, None] + tl.dot(b_At, b_do)
        _store_tile(dv, b_dv, t, iv, T, DV)

# ---- the kernels' launchers and autograd wrapper ----

def _blocks(D, Dv):
    """(BK, BV): powers of two from 16 (tl.dot's minimum) to 64 (a program's tiles stay small)."""
    return min(64, max(16, triton.next_power_of_2(D))), min(64, max(16, triton.next_power_of_2(Dv)))

# Phase 2's launch options. Compiled for sm_90 by Triton 3.9: with 4 warps its programs spill
# registers at D = 128, with 8 they do not; 2 stages keep fp32 tiles within 128 KiB of shared memory.
PHASE2 = dict(num_warps=8, num_stages=2)

def triton_state_pass(x, y, log_g, s0, chunk_size, reverse=False):
    """Phase 1 (x = k, y = v; reverse: x = q, y = do, s0 = dS_T): h (B, H, N, D, Dv) in x's dtype,
    the state entering each chunk (reverse: dS at each chunk's end), and s_out (B, H, D, Dv) fp32."""
    (B, H, T, D), Dv = x.shape, y.shape[-1]
    BK, BV = _blocks(D, Dv)
    h = x.new_empty(B, H, triton.cdiv(T, chunk_size), D, Dv)
    s_out = x.new_empty(B, H, D, Dv, dtype=torch.float32)
    grid = (triton.cdiv(D, BK), triton.cdiv(Dv, BV), B * H)
    _state_pass_kernel[grid](x, y, x if log_g is None else log_g, x if s0 is None else s0, h, s_out, T, D, Dv,
                             chunk_size, BK, BV, HAS_G=log_g is not None, HAS_S0=s0 is not None, REVERSE=reverse)
    return h, s_out

def triton_outputs(q, k, v, log_g, h, chunk_size):
    """Phase 2: every chunk's outputs (B, H, T, Dv) fp32 from the states entering them, h."""
    (B, H, T, D), Dv = q.shape, v.shape[-1]
    BK, BV = _blocks(D, Dv)
    o = q.new_empty(B, H, T, Dv, dtype=torch.float32)
    grid = (triton.cdiv(Dv, BV), triton.cdiv(T, chunk_size), B * H)
    _output_kernel[grid](q, k, v, q if log_g is None else log_g, h, o, T, D, Dv, chunk_size, BK, BV,
                         HAS_G=log_g is not None, **PHASE2)
    return o

def triton_gradients(q, k, v, log_g, h, do, dh, chunk_size):
    """Phase 2 of the backward: dq, dk, dv for every chunk from the states entering them (h) and the
    gradients at their ends (dh); and dB (B, H, T) fp32 = q . dq - k . dk, dlog_g before its sum over t' >= t."""
    (B, H, T, D), Dv = q.shape, v.shape[-1]
    BK, BV = _blocks(D, Dv)
    NK, NT, g = triton.cdiv(D, BK), triton.cdiv(T, chunk_size), q if log_g is None else log_g
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dB = q.new_zeros(NK, B, H, T, dtype=torch.float32)  # one share per feature block
    _dqk_kernel[(NK, NT, B * H)](q, k, v, g, h, do, dh, dq, dk, dB, T, D, Dv, chunk_size, BK, BV,
                                 HAS_G=log_g is not None, **PHASE2)
    _dv_kernel[(triton.cdiv(Dv, BV), NT, B * H)](q, k, g, do, dh, dv, T, D, Dv, chunk_size, BK, BV,
                                                 HAS_G=log_g is not None, **PHASE2)
    return dq, dk, dv, dB.sum(0)

class TritonLinearAttention(torch.autograd.Function):
    """(o fp32, final state fp32) = chunked linear attention, forward and backward in Triton."""

    @staticmethod
    def forward(ctx, q, k, v, log_g, initial_state, chunk_size):
        if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("impl='triton' on CPU tensors runs only with TRITON_INTERPRET=1 set "
                               "before triton is imported; use impl='torch' on CPU")
        if q.shape[-1] > 128:
            raise ValueError(f"impl='triton' supports feature dims D up to 128, got D={q.shape[-1]}; use impl='torch'")
        if chunk_size < 16 or chunk_size & (chunk_size - 1):
            raise ValueError(f"impl='triton' wants a power-of-two chunk_size >= 16, got {chunk_size}")
        k, v = k.to(q.dtype), v.to(q.dtype)  # the dots want one dtype (autograd casts the gradients back)
        q, k, v, log_g, initial_state = (x if x is None else x.contiguous() for x in (q, k, v, log_g, initial_state))
        h, ht = triton_state_pass(k, v, log_g, initial_state, chunk_size)  # phase 1
        o = triton_outputs(q, k, v, log_g, h, chunk_size)  # phase 2
        ctx.save_for_backward(q, k, v, log_g, initial_state, ht)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)  # dht stays None when the final state is unused
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        q, k, v, log_g, initial_state, ht = ctx.saved_tensors
        C = ctx.chunk_size
        # the dots want one dtype: do in v's (bf16 on a GPU; o itself came out in fp32)
        do = torch.zeros_like(v) if do is None else do.to(v.dtype).contiguous()
        dht = None if dht is None else dht.float().contiguous()
        # phase 1: the states entering each chunk again, then dS at each chunk's end, in reverse
        h, _ = triton_state_pass(k, v, log_g, initial_state, C)
        dh, dh0 = triton_state_pass(q, do, log_g, dht, C, reverse=True)
        dq, dk, dv, dB = triton_gradients(q, k, v, log_g, h, do, dh, C)  # phase 2
        dlog_g = None
        if log_g is not None:  # dlog_g_t = sum_{t' >= t} dL/dB_t' (+ <S_T, dS_T>): top of the file
            dlog_g = dB.flip(-1).cumsum(-1).flip(-1)
            if dht is not None:
                dlog_g = dlog_g + (ht * dht).sum((-2, -1))[..., None]
            dlog_g = dlog_g.to(log_g.dtype)
        dh0 = None if initial_state is None else dh0.to(initial_state.dtype)
        return dq, dk, dv, dlog_g, dh0, None

if HAS_TRITON:
    CHUNKED_FORMS["triton"] = TritonLinearAttention.apply

# ---- self-check: python kernel.py ----

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


def main():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device   {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
          f", torch {torch.__version__}, triton {triton.__version__ if HAS_TRITON else 'not installed'}")
    self_check(device)

if __name__ == "__main__":
    main()
