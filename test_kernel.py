"""
Tests of kernel.py: python -m pytest -q test_kernel.py   (CPU only; Triton runs in its interpreter)

By relative error ||a - b|| / ||b||. Linear attention: the chunked PyTorch form and Triton against
the naive reference in fp64 (outputs, final state, every gradient) at awkward lengths (T = 1, one
short of a chunk, one past it, several ragged chunks) and widths (D, Dv not multiples of 16, several
state blocks); the Triton kernel's two phases each on their own at the chunk boundaries (entering
states, outputs from given states, reverse state gradients); split-and-resume; strided inputs; the
recurrent step against the chunked form; bf16 at T = 16K stays finite. Gated delta rule: chunked
against the fp64 naive loop the same way; the (I + A)^-1 and its backward against torch.linalg.inv;
split-and-resume; the step against the chunked form; a second write overwrites a key.
"""
import pytest
import torch

import kernel  # conftest.py has set TRITON_INTERPRET=1 before this import
from conftest import rel_err

# ---- linear attention: naive vs chunked vs recurrent vs Triton ----

# fp32 forms vs an fp64 reference: observed errors are ~1e-7..1e-6 (sums of <= 200 terms),
# so 1e-5 leaves headroom while still catching a wrong decay, mask or missing term (>= 1e-2).
TOL = 1e-5
needs_triton = pytest.mark.skipif(not kernel.HAS_TRITON, reason="triton not installed")
IMPLS = ["torch", pytest.param("triton", marks=needs_triton)]

def make_inputs(B=2, H=2, T=65, D=16, Dv=16, gated=True, with_state=True, normalize=True, seed=0):
    """q, k >= 0 (feature-mapped), log_g < 0, S_0 >= 0 so the normaliser q.z stays positive."""
    g = torch.Generator().manual_seed(seed)
    Dz = Dv + normalize  # the normaliser rides as an extra value column
    return [torch.rand(B, H, T, D, generator=g), torch.rand(B, H, T, D, generator=g),
            torch.randn(B, H, T, Dv, generator=g),
            -torch.rand(B, H, T, generator=g) if gated else None,
            torch.rand(B, H, D, Dz, generator=g) if with_state else None]

def forward_backward(fn, impl, inputs, dtype, final_state=True, **kw):
    """fn (linear_attention or gated_delta_rule) on inputs (..., S_0): output, final state and the
    gradients of a random projection of both w.r.t. every input."""
    ins = [x.to(dtype, copy=True).requires_grad_() if x is not None else None for x in inputs]
    out = fn(*ins[:-1], initial_state=ins[-1], output_final_state=final_state, impl=impl, **kw)
    o, S = out if final_state else (out, None)
    g = torch.Generator().manual_seed(1)  # same projection for every impl
    loss = (o * torch.randn(o.shape, generator=g).to(dtype)).sum()
    if S is not None:
        loss = loss + (S * torch.randn(S.shape, generator=g).to(S.dtype)).sum()
    loss.backward()
    return [t for t in [o, S] + [x.grad for x in ins if x is not None] if t is not None]

# T: 1 step, one short of a chunk, exactly one chunk, one past it, several ragged chunks;
# D = 48 and Dv + 1 exercise the non-power-of-two masks; Dv = 100 spans two Triton value blocks;
# D = 72, Dv = 90: two feature and two value blocks (several state blocks), over 4 ragged chunks.
CASES = [  # T, D, Dv, gated, with_state, normalize, chunk_size, final_state
    (1, 16, 16, True, True, True, 16, True),
    (63, 16, 16, True, True, True, 32, True),
    (64, 16, 16, False, False, False, 64, True),
    (65, 16, 16, True, True, False, 32, False),
    (65, 48, 20, True, False, True, 16, True),
    (200, 16, 16, False, True, True, 32, True),
    (200, 16, 16, True, False, False, 32, True),
    (70, 24, 100, True, True, True, 32, True),
    (100, 72, 90, True, True, True, 32, True),
]

def case_id(T, D, Dv, gated, with_state, normalize, C, final_state):
    return (f"T{T}-D{D}-Dv{Dv}-{'decay' if gated else 'nodecay'}-{'state' if with_state else 'nostate'}"
            f"-{'norm' if normalize else 'plain'}-C{C}" + ("" if final_state else "-noST"))

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T,D,Dv,gated,with_state,normalize,C,final_state",
                         [pytest.param(*c, id=case_id(*c)) for c in CASES])
def test_matches_naive(impl, T, D, Dv, gated, with_state, normalize, C, final_state):
    inputs = make_inputs(T=T, D=D, Dv=Dv, gated=gated, with_state=with_state, normalize=normalize)
    run = lambda impl, dtype: forward_backward(kernel.linear_attention, impl, inputs, dtype, final_state,
                                               normalize=normalize, chunk_size=C)
    ref, got = run("naive", torch.float64), run(impl, torch.float32)
    assert len(got) == len(ref)  # o, [S], dq, dk, dv, [dlog_g], [dS0]
    errs = [rel_err(a, b) for a, b in zip(got, ref)]
    assert max(errs) <= TOL, errs

@needs_triton
@pytest.mark.parametrize("T,C,D,Dv", [(1, 16, 16, 16), (65, 16, 24, 20), (100, 32, 72, 90)])
def test_triton_phases_match_naive_at_chunk_boundaries(T, C, D, Dv):
    """Each phase of the Triton kernel on its own against the fp64 naive form at the chunk boundaries
    e = n C: phase 1 gives the state entering each chunk (naive over steps < e) and the final state;
    phase 2, fed the naive entering states, gives every output; phase 1 in reverse gives dL/dS at each
    chunk's end (autograd through naive over steps >= e started from that state)."""
    q, k, v, log_g, S0 = make_inputs(B=1, T=T, D=D, Dv=Dv, normalize=False)
    ends = list(range(C, T, C)) + [T]  # where each chunk stops

    def naive(start, stop, S):  # (o, S) of steps [start, stop) from state S, in fp64
        return kernel.naive_linear_attention(*(x[:, :, start:stop].double() for x in (q, k, v, log_g)), S)

    S = [S0.double()]  # the state entering each chunk, then at T
    for start, stop in zip([0] + ends[:-1], ends):
        S.append(naive(start, stop, S[-1])[1])
    h, S_T = kernel.triton_state_pass(k, v, log_g, S0, C)
    assert rel_err(h, torch.stack(S[:-1], dim=2)) <= TOL and rel_err(S_T, S[-1]) <= TOL
    o = kernel.triton_outputs(q, k, v, log_g, torch.stack(S[:-1], dim=2).float(), C)
    assert rel_err(o, naive(0, T, S[0])[0]) <= TOL
    g = torch.Generator().manual_seed(1)
    do, dS_T = torch.randn(v.shape, generator=g), torch.randn(S0.shape, generator=g)
    dS = []  # dL/dS at each chunk's end for L = <o, do> + <S_T, dS_T>; at T it is dS_T
    for n, e in enumerate(ends[:-1]):
        S_e = S[n + 1].clone().requires_grad_()
        o_rest, S_last = naive(e, T, S_e)
        ((o_rest * do[:, :, e:]).sum() + (S_last * dS_T).sum()).backward()
        dS.append(S_e.grad)
    dS.append(dS_T)
    dh, _ = kernel.triton_state_pass(q, do, log_g, dS_T, C, reverse=True)
    assert rel_err(dh, torch.stack(dS, dim=2)) <= TOL

@pytest.mark.parametrize("impl", IMPLS)
def test_split_and_resume(impl):
    """Run the first half, hand its final state to the second half: same as one pass."""
    q, k, v, log_g, _ = make_inputs(T=100, with_state=False)
    o, S = kernel.linear_attention(q, k, v, log_g, output_final_state=True, chunk_size=32, impl=impl)
    first, second = ([x[:, :, s] for x in (q, k, v, log_g)] for s in (slice(0, 37), slice(37, None)))
    o1, S1 = kernel.linear_attention(*first, output_final_state=True, chunk_size=32, impl=impl)
    o2, S2 = kernel.linear_attention(*second, initial_state=S1, output_final_state=True, chunk_size=32, impl=impl)
    assert rel_err(torch.cat([o1, o2], dim=2), o) <= TOL and rel_err(S2, S) <= TOL

@pytest.mark.parametrize("impl", IMPLS)
def test_strided_inputs(impl):
    """Non-contiguous views, as a model's head split (B, T, H, D) -> (B, H, T, D) makes them."""
    inputs = make_inputs(T=50)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in inputs[:4]]
    strided.append(inputs[4].transpose(-1, -2).contiguous().transpose(-1, -2))
    assert not any(x.is_contiguous() for x in strided)
    for a, b in zip(forward_backward(kernel.linear_attention, impl, strided, torch.float32, chunk_size=16),
                    forward_backward(kernel.linear_attention, "naive", inputs, torch.float64, chunk_size=16)):
        assert rel_err(a, b) <= TOL

def test_step_matches_chunked():
    """Decoding token by token with the recurrent step equals the chunked form."""
    q, k, v, log_g, S0 = make_inputs(T=40, normalize=False)
    o_ref, S_ref = kernel.chunked_linear_attention(q, k, v, log_g, S0, chunk_size=16)
    S, outs = S0, []
    for t in range(q.shape[2]):
        o_t, S = kernel.linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], log_g[:, :, t], S, normalize=False)
        outs.append(o_t)
    assert rel_err(torch.stack(outs, dim=2), o_ref) <= TOL and rel_err(S, S_ref) <= TOL

@pytest.mark.parametrize("log_g_value", [None, -5.0])  # no decay / g = exp(-5) ~ 0.007 per step
def test_bf16_long_sequence_is_finite(log_g_value):
    """bf16 at T = 16K through the torch path: no overflow in the decay, fp32 state, no NaN.
    (impl='torch' only: the Triton interpreter cannot run bf16 dots.)"""
    T = 16384
    q, k, v, _, _ = make_inputs(B=1, H=2, T=T, D=16, with_state=False)
    log_g = None if log_g_value is None else torch.full((1, 2, T), log_g_value)
    ins = [x.bfloat16().requires_grad_() for x in (q, k, v)]
    lg = None if log_g is None else log_g.bfloat16().requires_grad_()
    o, S = kernel.linear_attention(*ins, lg, output_final_state=True, impl="torch")
    (o.float().sum() + S.sum()).backward()
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    for t in [o, S] + [x.grad for x in ins] + ([lg.grad] if lg is not None else []):
        assert torch.isfinite(t).all()
    o_ref = kernel.linear_attention(q, k, v, log_g, impl="torch")  # fp32, same inputs
    assert rel_err(o, o_ref) < 2e-2  # bf16 inputs carry ~3 significant digits

@needs_triton
def test_triton_rejects_bad_sizes():
    q = torch.rand(1, 1, 8, 129)
    with pytest.raises(ValueError, match="feature dims D up to 128"):
        kernel.linear_attention(q, q, q[..., :16], impl="triton")
    with pytest.raises(ValueError, match="power-of-two chunk_size"):
        kernel.linear_attention(q[..., :16], q[..., :16], q[..., :16], chunk_size=24, impl="triton")


# ---- gated delta rule: naive vs chunked vs recurrent ----

def make_gdn_inputs(B=2, H=2, T=65, D=16, Dv=24, gated=True, with_state=True, seed=0):
    """q, k unit rows along D (k's is the caller's job; q's is harmless), beta = sigmoid(randn) in (0, 1), log_g < 0 but
    mostly near 0, so the state survives a chunk and the hand-off between chunks is exercised."""
    g = torch.Generator().manual_seed(seed)
    nn_f = torch.nn.functional
    q, k = (nn_f.normalize(torch.randn(B, H, T, D, generator=g), dim=-1) for _ in range(2))
    return [q, k, torch.randn(B, H, T, Dv, generator=g), torch.sigmoid(torch.randn(B, H, T, generator=g)),
            nn_f.logsigmoid(3 + torch.randn(B, H, T, generator=g)) if gated else None,
            torch.randn(B, H, D, Dv, generator=g) if with_state else None]

# D = 16 != Dv = 24 catches a transposed state; T = 1, 63, 64, 65, 200 as for linear attention.
GDN_CASES = [  # T, gated, with_state, chunk_size
    pytest.param(1, True, True, 16, id="T1-decay-state-C16"),
    pytest.param(63, True, True, 32, id="T63-decay-state-C32"),
    pytest.param(64, False, False, 64, id="T64-nodecay-nostate-C64"),
    pytest.param(65, True, False, 32, id="T65-decay-nostate-C32"),
    pytest.param(65, False, True, 16, id="T65-nodecay-state-C16"),
    pytest.param(200, True, True, 64, id="T200-decay-state-C64"),
    pytest.param(200, False, True, 32, id="T200-nodecay-state-C32"),
    pytest.param(200, True, False, 16, id="T200-decay-nostate-C16"),
]

@pytest.mark.parametrize("T,gated,with_state,C", GDN_CASES)
def test_gated_delta_rule_chunked_matches_naive(T, gated, with_state, C):
    """fp32 chunked vs fp64 token loop: o, state, dq, dk, dv, dbeta, [dlog_g], [dS0]. Same 1e-5 as
    above: inverting a unit lower-triangular C x C matrix keeps ~1e-7 in fp32."""
    inputs = make_gdn_inputs(T=T, gated=gated, with_state=with_state)
    ref = forward_backward(kernel.gated_delta_rule, "naive", inputs, torch.float64, chunk_size=C)
    got = forward_backward(kernel.gated_delta_rule, "torch", inputs, torch.float32, chunk_size=C)
    assert len(got) == len(ref) == 6 + gated + with_state
    errs = [rel_err(a, b) for a, b in zip(got, ref)]
    assert max(errs) <= TOL, errs

def test_unit_lower_inverse_and_its_gradient():
    """(I + A)^-1 from the strict lower part of A, and the hand-written backward, against
    torch.linalg.inv and autograd through it (fp64; A's diagonal and upper part must not matter)."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 2, 9, 9, generator=g, dtype=torch.float64).requires_grad_()
    L = torch.eye(9, dtype=torch.float64) + A.tril(-1)
    W = torch.randn(3, 2, 9, 9, generator=g, dtype=torch.float64)  # a random loss direction
    X = kernel.UnitLowerInverse.apply(A)
    (dA,) = torch.autograd.grad((X * W).sum(), A)
    (dA_ref,) = torch.autograd.grad((torch.linalg.inv(L) * W).sum(), A)
    assert rel_err(X, torch.linalg.inv(L)) < 1e-12 and rel_err(dA, dA_ref) < 1e-12

def test_gated_delta_rule_split_and_resume():
    """Run the first 37 steps, hand the final state to the other 63: same as one pass."""
    q, k, v, beta, log_g, _ = make_gdn_inputs(T=100, with_state=False)
    o, S = kernel.gated_delta_rule(q, k, v, beta, log_g, output_final_state=True, chunk_size=32)
    first, second = ([x[:, :, s] for x in (q, k, v, beta, log_g)] for s in (slice(0, 37), slice(37, None)))
    o1, S1 = kernel.gated_delta_rule(*first, output_final_state=True, chunk_size=32)
    o2, S2 = kernel.gated_delta_rule(*second, initial_state=S1, output_final_state=True, chunk_size=32)
    assert rel_err(torch.cat([o1, o2], dim=2), o) <= TOL and rel_err(S2, S) <= TOL

def test_gated_delta_rule_step_matches_chunked():
    """Decoding token by token with the rank-one step equals the chunked form."""
    q, k, v, beta, log_g, S0 = make_gdn_inputs(T=40)
    o_ref, S_ref = kernel.chunked_gated_delta_rule(q, k, v, beta, log_g, S0, chunk_size=16)
    S, outs = S0, []
    for t in range(q.shape[2]):
        o_t, S = kernel.gated_delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], log_g[:, :, t], S)
        outs.append(o_t)
    assert rel_err(torch.stack(outs, dim=2), o_ref) <= TOL and rel_err(S, S_ref) <= TOL

def test_delta_rule_overwrites_a_key():
    """The point of the delta rule: with beta = 1 a second write to the same unit key replaces the
    first value (linear attention would return v1 + v2), and an orthogonal key is untouched."""
    k = torch.eye(4)[[0, 0, 1]].reshape(1, 1, 3, 4)  # keys e0, e0, e1
    v = torch.tensor([[1., 2.], [3., 4.], [5., 6.]]).reshape(1, 1, 3, 2)
    _, S = kernel.gated_delta_rule(k, k, v, torch.ones(1, 1, 3), output_final_state=True, chunk_size=16)
    assert torch.allclose(S[0, 0, :2], v[0, 0, 1:]) and S[0, 0, 2:].abs().max() == 0  # S^T e0 = v2, S^T e1 = v3
