"""
Checks for EXERCISES.md. Each exercise's function runs on random inputs (odd lengths, odd
shapes, gradients) and is compared with an independent reference written out below: the
recurrence as a plain loop, or the paper's formula itself. No stored numbers.

    python -m pytest -q test_exercises.py                               # the project's own code: all pass
    cp exercises/template.py my_solution.py                             # stubs to start from
    DTR_SOLUTION=my_solution.py python -m pytest -q test_exercises.py   # your code
    DTR_SOLUTION=my_solution.py python -m pytest -q test_exercises.py -k ex1   # one exercise

With DTR_SOLUTION, a function your file does not define skips its exercise (the skip names
it), a stub that raises NotImplementedError fails as "not written yet", and a wrong value
fails with where it first differs and, for the common mistakes, which one it looks like.
Without DTR_SOLUTION the functions come from kernel.py (exercises 1-3), students.py (4), dtr.py (5-6) and
experiments/reverse_greedy.py (7, an open exercise; that script also measures it on a finished run).

Map: ex1 naive recurrence, ex2 chunked form, ex3 one-token step, ex4 Hedgehog student,
ex5 distillation loss, ex6 greedy replacement and M_best / M_opt, ex7 reverse greedy. The checks
of these checks, exercises/test_checks.py, run them on the stubs and on typical mistakes.

Tolerance: fp32 results against an fp64 reference, relative error ||a - b|| / ||b||. Sums of a
few hundred fp32 terms keep ~1e-6, so 1e-5 passes every correct form, while the mistakes the
messages name are off by 1e-2 or more.
"""
import contextlib
import copy
import itertools
import math
import os
import runpy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import dtr
import kernel
import students
from conftest import HERE, rel_err, tiny_gpt
from train_teacher import get_batch, val_loss, windows

TOL = 1e-5
EPS = 1e-6  # the normaliser's eps, as in kernel.py

# ---- where the functions under test come from ----

SOLUTION = os.environ.get("DTR_SOLUTION")
REVERSE_GREEDY = os.path.join(HERE, "experiments", "reverse_greedy.py")  # exercise 7's reference

EXERCISE = {"naive_linear_attention": 1, "chunked_linear_attention": 2, "linear_attention_step": 3,  # name -> exercise
            "hedgehog_feature_map": 4, "LinearAttention": 4, "distill_loss": 5,
            "greedy_round": 6, "greedy_replace": 6, "select_models": 6, "reverse_greedy": 7}

def load_solution(path):
    """A Python file's names, {name: object}: the file run as a module (its __main__ block does not run)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DTR_SOLUTION={path}: no such file")
    return runpy.run_path(path)

solution = load_solution(SOLUTION) if SOLUTION else None

def fail(msg):
    pytest.fail(msg, pytrace=False)  # the message is the report: no traceback of the checks

def get(name):
    """The function under test: the student's if DTR_SOLUTION is set (one the file lacks skips
    the check), else the project's; a stub's NotImplementedError becomes a one-line failure."""
    n = EXERCISE[name]
    if solution is not None:
        fn = solution.get(name)
        if fn is None:
            pytest.skip(f"exercise {n}: {SOLUTION} defines no {name}")
    elif n == 7:
        fn = load_solution(REVERSE_GREEDY)[name]
    else:
        fn = getattr(kernel if n <= 3 else students if n == 4 else dtr, name)

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError:
            pass  # fail outside the except, or pytest prints the stub's exception as well
        fail(f"exercise {n}: {name} is not written yet (it raises NotImplementedError)")
    return call

def check_shape(what, got, want):
    if not isinstance(got, torch.Tensor):
        fail(f"{what} should be a tensor of shape {tuple(want)}, got {type(got).__name__}")
    if tuple(got.shape) != tuple(want):
        fail(f"{what} has shape {tuple(got.shape)}, expected {tuple(want)}")

# ---- exercises 1-3: the recurrence, its chunked form, its one-token step ----

def recurrence(q, k, v, log_g=None, S0=None, mistake=None):
    """S_t = g_t S_{t-1} + k_t v_t^T, o_t = q_t^T S_t, one step at a time in fp64. `mistake`
    computes a common wrong version instead, so a failing check can say which one it saw."""
    q, k, v = q.double(), k.double(), v.double()
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1]) if S0 is None or mistake == "ignore_state" else S0.double()
    outs = []
    for t in range(T):
        g = 1.0
        if log_g is not None and mistake != "ignore_g":
            g = log_g[:, :, t, None, None].double()
            g = g if mistake == "g_is_log_g" else torch.exp(g)
        kv = k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, D, Dv) outer product k_t v_t^T
        S_prev = S
        S = g * (S + kv) if mistake == "decay_after_add" else g * S + kv
        read = S_prev if mistake == "read_before_update" else S
        outs.append((q[:, :, t, None, :] @ read)[:, :, 0])  # (B, H, Dv)
    o = torch.stack(outs, dim=2)  # (B, H, T, Dv)
    if mistake == "normalised":  # the normaliser z_t rides the same recurrence with v = 1
        z, _ = recurrence(q, k, torch.ones_like(v[..., :1]), log_g, None)
        o = o / (z + EPS)
    return o, S

MISTAKES = {  # what each wrong version means, as a student would fix it
    "read_before_update": "o_t must read the state *after* this step's update, o_t = q_t^T S_t "
                          "(token t attends to itself); yours reads S_{t-1}",
    "decay_after_add": "the decay multiplies the old state only, S_t = g_t S_{t-1} + k_t v_t^T; "
                       "yours decays the new k_t v_t^T too",
    "ignore_g": "log_g is ignored: S_t = g_t S_{t-1} + k_t v_t^T with g_t = exp(log_g_t)",
    "g_is_log_g": "the decay is g_t = exp(log_g_t); yours multiplies by log_g_t itself",
    "ignore_state": "initial_state is ignored: the recurrence starts from S_{-1} = initial_state",
    "normalised": "this form is unnormalised (o_t = q_t^T S_t); yours divides by q_t . z_t",
}

def diagnose(what, out, q, k, v, log_g, S0, chunk_size=None):
    """Fail with a message a student can act on unless out = (o, state) follows the recurrence."""
    if not (isinstance(out, tuple) and len(out) == 2):
        fail(f"{what} should return a tuple (o, state), got {type(out).__name__}")
    o, S = out
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    check_shape(f"{what}: o", o, (B, H, T, Dv))
    check_shape(f"{what}: state", S, (B, H, D, Dv))
    ref_o, ref_S = recurrence(q, k, v, log_g, S0)
    e_o, e_S = rel_err(o, ref_o), rel_err(S, ref_S)
    if e_o <= TOL and e_S <= TOL:
        return
    if not (torch.isfinite(o).all() and torch.isfinite(S).all()):
        fail(f"{what}: o or state holds inf/NaN. Only ever exponentiate log-decay differences "
             f"b_t - b_s with s <= t (<= 0); exp(b_t) * exp(-b_s) overflows when the decay is strong")
    for mistake, hint in MISTAKES.items():
        if (mistake in ("ignore_g", "g_is_log_g", "decay_after_add") and log_g is None) or \
           (mistake == "ignore_state" and S0 is None):
            continue  # this mistake changes nothing on these inputs
        wrong_o = recurrence(q, k, v, log_g, S0, mistake)[0]
        if (o.double() - wrong_o).norm() <= 1e-4 * ref_o.norm():  # relative to the right o: wrong_o may be 0
            fail(f"{what}: {hint}")
    if e_o > TOL:  # the first t where o differs by more than TOL relative to o_t's size
        sq = lambda x: x.double().square().sum(dim=(0, 1, 3))  # (T,) squared size of each step's output
        err = (sq(o - ref_o.to(o.dtype)) / sq(ref_o)).sqrt()
        bad = (~(err <= TOL)).nonzero()  # ~(<=) so that NaN counts as bad
        t = int(bad[0]) if len(bad) else None
        where = f"o first differs from the reference at t={t} (T={T}, relative error {e_o:.1e} > {TOL:g})"
        if chunk_size is None:
            hint = ("check the first update S_0 = g_0 S_init + k_0 v_0^T and the read o_0 = q_0^T S_0" if t == 0
                    else "the first steps agree: check how the state carries from one step to the next")
        elif t < chunk_size:
            hint = ("it is inside the first chunk, so the intra-chunk part: sum over s <= t (s = t included) "
                    "of (q_t . k_s) exp(b_t - b_s) v_s, with b the cumulative log_g from the chunk start")
        elif t % chunk_size == 0:
            hint = (f"it is the first step of chunk {t // chunk_size}: check the state handed between chunks, "
                    f"S_C = exp(b_C) S_0 + sum_s exp(b_C - b_s) k_s v_s^T, and the inter-chunk term exp(b_t) q_t^T S_0")
        elif t // chunk_size == (T - 1) // chunk_size and T % chunk_size:
            hint = f"it is in the last, partial chunk ({T % chunk_size} of {chunk_size} steps): check the padding"
        else:
            hint = f"it is inside chunk {t // chunk_size}: check the inter-chunk term exp(b_t) q_t^T S_0"
        fail(f"{what}: {where}; {hint}")
    fail(f"{what}: o is right but the returned state is not (relative error {e_S:.1e}): return S_T, the state "
         f"after the last step, with shape (B, H, D, Dv)")

def make_inputs(T, B=2, H=2, D=8, Dv=5, gated=True, with_state=True, log_g_scale=1.0, seed=0):
    """q, k >= 0 as after a feature map; Dv != D so that a transposed state shows up as a shape error."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, H, T, D, generator=g), torch.rand(B, H, T, D, generator=g),
            torch.randn(B, H, T, Dv, generator=g),
            -log_g_scale * torch.rand(B, H, T, generator=g) if gated else None,
            torch.randn(B, H, D, Dv, generator=g) if with_state else None)

def check_gradients(what, fn, T, **kwargs):
    """d(projection of o and state)/d(every input) equals the fp64 loop's: the function trains."""
    inputs = make_inputs(T, seed=3)
    diagnose(what, fn(*inputs, **kwargs), *inputs, chunk_size=kwargs.get("chunk_size"))  # the values first
    g = torch.Generator().manual_seed(4)
    P_o, P_S = torch.randn(2, 2, T, 5, generator=g), torch.randn(2, 2, 8, 5, generator=g)

    def grads(f, dtype):
        xs = [x.to(dtype, copy=True).requires_grad_() for x in inputs]
        o, S = f(*xs)
        error = None
        try:
            ((o * P_o.to(o.dtype)).sum() + (S * P_S.to(S.dtype)).sum()).backward()
        except RuntimeError as e:
            error = str(e).split(":")[0]  # the first clause; fail outside the except, for one clean message
        if error:
            fail(f"{what}: backward failed ({error}). An in-place update of a tensor autograd still "
                 f"needs (S *= g, S += k v^T, o[:, :, t] = ...) breaks it: write S = g * S + k v^T, stack the o_t")
        return [x.grad for x in xs]

    got = grads(lambda *xs: fn(*xs, **kwargs), torch.float32)
    ref = grads(recurrence, torch.float64)
    for name, a, b in zip(["q", "k", "v", "log_g", "initial_state"], got, ref):
        if a is None:
            fail(f"{what}: no gradient reaches {name}: is it detached, or used through .item() or torch.no_grad()?")
        if rel_err(a, b) > TOL:
            fail(f"{what}: the output is right but its gradient w.r.t. {name} is not (relative error "
                 f"{rel_err(a, b):.1e}): is something detached, or updated in place?")

# -- exercise 1: the naive form --

@pytest.mark.parametrize("T", [1, 7, 33])
def test_ex1_naive_without_decay(T):
    q, k, v, _, _ = make_inputs(T)
    diagnose("naive_linear_attention, log_g=None", get("naive_linear_attention")(q, k, v), q, k, v, None, None)

@pytest.mark.parametrize("T", [1, 33])
def test_ex1_naive_with_decay(T):
    q, k, v, log_g, _ = make_inputs(T)
    diagnose("naive_linear_attention with log_g", get("naive_linear_attention")(q, k, v, log_g), q, k, v, log_g, None)

def test_ex1_naive_from_an_initial_state():
    q, k, v, log_g, S0 = make_inputs(17)
    out = get("naive_linear_attention")(q, k, v, log_g, initial_state=S0)
    diagnose("naive_linear_attention with initial_state", out, q, k, v, log_g, S0)

def test_ex1_naive_gradients():
    check_gradients("naive_linear_attention", get("naive_linear_attention"), 20)

# -- exercise 2: the chunked form --

# T: one step, one short of a chunk, exactly one chunk, one past it, several ragged chunks,
# a chunk longer than the sequence; with and without decay and initial state
CHUNK_CASES = [pytest.param(T, C, gated, state, id=f"T{T}-C{C}{'-decay' if gated else ''}{'-state' if state else ''}")
               for T, C, gated, state in [(1, 16, True, True), (15, 16, True, False), (16, 16, False, True),
                                          (17, 16, True, True), (130, 32, True, True), (70, 64, False, False),
                                          (20, 64, True, True)]]

@pytest.mark.parametrize("T,C,gated,with_state", CHUNK_CASES)
def test_ex2_chunked_equals_the_recurrence(T, C, gated, with_state):
    q, k, v, log_g, S0 = make_inputs(T, gated=gated, with_state=with_state)
    out = get("chunked_linear_attention")(q, k, v, log_g, initial_state=S0, chunk_size=C)
    diagnose(f"chunked_linear_attention, T={T} chunk_size={C}", out, q, k, v, log_g, S0, chunk_size=C)

def test_ex2_chunked_strong_decay_stays_finite():
    # log_g down to -5 per step: over a 64-step chunk exp(-b_s) would reach exp(320) = inf in fp32
    q, k, v, log_g, S0 = make_inputs(200, log_g_scale=5.0)
    out = get("chunked_linear_attention")(q, k, v, log_g, initial_state=S0, chunk_size=64)
    diagnose("chunked_linear_attention with strong decay", out, q, k, v, log_g, S0, chunk_size=64)

def test_ex2_chunked_gradients():
    check_gradients("chunked_linear_attention, chunk_size=16", get("chunked_linear_attention"), 40, chunk_size=16)

class CountWork(TorchDispatchMode):
    """Counts the tensor operations run inside it, and the largest tensor any of them makes."""
    ops = largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.largest = max([self.largest] + [t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor)])
        return out

def test_ex2_chunked_does_chunked_work():
    # the values cannot tell the chunked form from the loop it replaces or from the T x T form; its work can,
    # without a clock. At T = 2048, C = 64 a chunked form runs a few operations per chunk (this project's: 122
    # in all) where a loop runs several per step (43,008 for kernel.py's step), and doubling T doubles its
    # largest tensor (C x C blocks per chunk) where the quadratic form's (T x T) grows 4x
    work = {T: CountWork() for T in (1024, 2048)}
    for T, count in work.items():
        with count:
            get("chunked_linear_attention")(*make_inputs(T, B=1, H=1), chunk_size=64)
    if work[2048].ops > 2048:
        fail(f"chunked_linear_attention ran {work[2048].ops:,} operations for T = 2048 (chunk_size 64): it loops over "
             f"the time steps, as exercise 1's loop does; loop over the 32 chunks only, with dense work inside each")
    if work[2048].largest > 3 * work[1024].largest:
        fail(f"chunked_linear_attention's largest tensor grew {work[2048].largest / work[1024].largest:.1f}x when T "
             f"doubled (1024 -> 2048): it is T x T, the quadratic form; cut time into chunks of chunk_size steps")

# -- exercise 3: the one-token step --

def decode(step, q, k, v, log_g, S0, normalize):
    """Feed the tokens one at a time, carrying the state. Returns (o stacked over t, last state)."""
    S, outs = (None if S0 is None else S0.clone()), []  # a copy: the inputs stay the reference's
    for t in range(q.shape[2]):
        o_t, S = step(q[:, :, t], k[:, :, t], v[:, :, t], None if log_g is None else log_g[:, :, t],
                      state=S, normalize=normalize)
        outs.append(o_t)
    return torch.stack(outs, dim=2), S

@pytest.mark.parametrize("gated,with_state", [(False, False), (True, True)], ids=["plain", "decay-state"])
def test_ex3_step_decodes_like_the_recurrence(gated, with_state):
    q, k, v, log_g, S0 = make_inputs(30, gated=gated, with_state=with_state)
    out = decode(get("linear_attention_step"), q, k, v, log_g, S0, normalize=False)
    diagnose("linear_attention_step, normalize=False, token by token", out, q, k, v, log_g, S0)

def test_ex3_step_normalised():
    q, k, v, log_g, _ = make_inputs(25, with_state=False)
    o, S = decode(get("linear_attention_step"), q, k, v, log_g, None, normalize=True)
    # the normaliser z rides the state as one more value column of ones: S is (B, H, D, Dv + 1)
    ref_o, ref_S = recurrence(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), log_g)
    ref_o = ref_o[..., :-1] / (ref_o[..., -1:] + EPS)
    check_shape("linear_attention_step, normalize=True: o", o, ref_o.shape)
    check_shape("linear_attention_step, normalize=True: state (z is its extra last column)", S, ref_S.shape)
    if rel_err(S, ref_S) > TOL:
        fail(f"linear_attention_step, normalize=True: the state is wrong (relative error {rel_err(S, ref_S):.1e}); "
             f"its last column is z_t = g_t z_(t-1) + k_t, from appending a 1 to v_t")
    if rel_err(o, ref_o) > TOL:
        fail(f"linear_attention_step, normalize=True: o is wrong (relative error {rel_err(o, ref_o):.1e}); "
             f"o_t = q_t^T S_t[:, :Dv] / (q_t . z_t + {EPS:g}), z_t the state's last column")

def test_ex3_step_leaves_the_callers_state_alone():
    # an in-place update (state *= g) would change the caller's tensor: decoding two continuations
    # from one prompt state, or retrying a step, would then silently start from the wrong state
    q, k, v, log_g, S0 = make_inputs(1)
    before = S0.clone()
    o, S = get("linear_attention_step")(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_g[:, :, 0], state=S0, normalize=False)
    if not torch.equal(S0, before):
        fail("linear_attention_step changed the state it was given: return a new one (S = g * S + k v^T), "
             "do not update it in place")
    check_shape("linear_attention_step: o", o, v[:, :, 0].shape)

# ---- exercise 4: the Hedgehog feature map and the student ----

def ref_hedgehog(x, w):
    """phi(x) = softmax([x W, -x W]) per head, written out: x (B, nh, T, hs), w (nh, hs, hs)."""
    xw = torch.einsum("bhtd,hde->bhte", x.double(), w.double())
    z = torch.cat([xw, -xw], dim=-1)  # (B, nh, T, 2 hs)
    e = torch.exp(z - z.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)

def test_ex4_hedgehog_feature_map():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 3, 9, 4, generator=g), torch.randn(3, 4, 4, generator=g)  # w not symmetric
    phi = get("hedgehog_feature_map")(x, w)
    check_shape("hedgehog_feature_map(x (2, 3, 9, 4), w (3, 4, 4))", phi, (2, 3, 9, 8))
    if rel_err(phi, ref_hedgehog(x, w)) <= TOL:
        return
    if rel_err(phi, ref_hedgehog(x, w.transpose(-1, -2))) <= 1e-4:
        fail("hedgehog_feature_map: you computed x @ w^T; the map is x @ w (w[h] is (hs_in, hs_out))")
    xw = torch.einsum("bhtd,hde->bhte", x, w)
    if rel_err(phi, torch.cat([xw, xw], -1).softmax(-1)) <= 1e-4:
        fail("hedgehog_feature_map: the second half must be -x @ w: softmax([xW, -xW]), not softmax([xW, xW])")
    if rel_err(phi, torch.cat([xw.softmax(-1), (-xw).softmax(-1)], -1)) <= 1e-4:
        fail("hedgehog_feature_map: one softmax over all 2 hs features of [xW, -xW], not one per half")
    fail(f"hedgehog_feature_map: differs from softmax([x @ w, -x @ w], dim=-1) (relative error "
         f"{rel_err(phi, ref_hedgehog(x, w)):.1e}); each head h uses its own w[h]")

def ref_student(s, x):
    """The student's forward from its parameters alone, in fp64: Hedgehog features, the optional
    decay, and normalised causal linear attention written as a T x T sum."""
    s = copy.deepcopy(s).double()
    x = x.double()
    B, T, C = x.shape
    nh = s.n_head
    q, k, v = F.linear(x, s.c_attn.weight, s.c_attn.bias).split(C, dim=2)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
    fq, fk = ref_hedgehog(q, s.fmap_q), ref_hedgehog(k, s.fmap_k)  # (B, nh, T, 2 hs)
    b = torch.zeros(B, nh, T, dtype=x.dtype)
    if getattr(s, "gate", None) is not None:
        b = (F.logsigmoid(F.linear(x, s.gate.weight, s.gate.bias)) / 16).transpose(1, 2).cumsum(-1)
    # A_ts = phi(q_t) . phi(k_s) * g_(s+1) ... g_t for s <= t: the weight of token s in o_t
    decay = torch.exp(b[..., :, None] - b[..., None, :]).tril()
    A = (fq @ fk.transpose(-1, -2)) * decay  # (B, nh, T, T)
    y = (A @ v) / (A.sum(-1, keepdim=True) + EPS)
    return F.linear(y.transpose(1, 2).reshape(B, T, C), s.c_proj.weight, s.c_proj.bias)

@pytest.mark.parametrize("gated", [False, True], ids=["hedgehog", "gla"])
def test_ex4_student_starts_as_a_copy_of_the_teacher(gated):
    teacher = tiny_gpt(n_layer=2).transformer.h[0].attn
    s = get("LinearAttention")(teacher, gated)
    for name in ("c_attn", "c_proj"):
        mine, theirs = getattr(s, name, None), getattr(teacher, name)
        if not isinstance(mine, torch.nn.Linear):
            fail(f"LinearAttention needs its own nn.Linear {name}, copied from the teacher's")
        if mine is theirs or mine.weight.data_ptr() == theirs.weight.data_ptr():
            fail(f"LinearAttention.{name} is the teacher's own layer: deep-copy it (copy.deepcopy), or "
                 f"training the student will change the teacher")
        if not (torch.equal(mine.weight, theirs.weight) and torch.equal(mine.bias, theirs.bias)):
            fail(f"LinearAttention.{name} should start equal to the teacher's {name}")
    params = {id(p) for p in s.parameters()}
    hs = teacher.c_attn.in_features // teacher.n_head
    for name in ("fmap_q", "fmap_k"):
        w = getattr(s, name, None)
        if w is None or id(w) not in params:
            fail(f"LinearAttention.{name} should be an nn.Parameter (so distillation trains it)")
        check_shape(f"LinearAttention.{name}", w, (teacher.n_head, hs, hs))
        if not torch.equal(w, torch.eye(hs).expand_as(w)):
            fail(f"LinearAttention.{name} should start as the identity for every head")
    gate = getattr(s, "gate", None)
    if not gated:
        if gate is not None:
            fail("LinearAttention(teacher, gated=False) should have gate = None")
        return
    if not isinstance(gate, torch.nn.Linear) or id(gate.weight) not in params:
        fail("LinearAttention(teacher, gated=True) needs gate = nn.Linear(n_embd, n_head)")
    g = torch.exp(F.logsigmoid(gate(torch.randn(4, 8, teacher.c_attn.in_features))) / 16)
    if not (g > 0.99).all():
        fail(f"a fresh gate should keep nearly everything (g_t > 0.99, long memory, close to the plain "
             f"student); its smallest g is {g.min().item():.3f}: zero weight and bias 4.0 give 0.9989")

def test_ex4_hedgehog_student_equals_softmax_when_wq_is_zero():
    # with W_q = 0, softmax attention is the causal mean of v; so is the fresh Hedgehog student,
    # since phi(0) is uniform and every phi(k) sums to 1: the copy is exact before any training
    teacher = tiny_gpt(n_layer=2).transformer.h[0].attn
    with torch.no_grad():
        teacher.c_attn.weight[:16] = 0
        teacher.c_attn.bias[:16] = 0
    s = get("LinearAttention")(teacher, False)
    x = torch.randn(3, 32, 16, generator=torch.Generator().manual_seed(0))
    y, want = s(x), teacher(x)
    check_shape("LinearAttention(x (3, 32, 16))", y, want.shape)
    if rel_err(y, want) > TOL:
        fail(f"with W_q = 0 the fresh hedgehog student should equal the teacher's attention exactly "
             f"(relative error {rel_err(y, want):.1e}): is the output normalised (divide by "
             f"phi(q_t) . sum_s phi(k_s)), causal, and the heads split as the teacher splits them?")

def perturbed_student(gated):
    """A student whose feature maps and gate are no longer at their initial values."""
    s = get("LinearAttention")(tiny_gpt(n_layer=2).transformer.h[0].attn, gated)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in (s.fmap_q, s.fmap_k):
            w.add_(0.5 * torch.randn(w.shape, generator=g))
        if gated:
            s.gate.weight.normal_(0, 1.0, generator=g)
            s.gate.bias.normal_(0, 1.0, generator=g)
    return s

@pytest.mark.parametrize("gated", [False, True], ids=["hedgehog", "gla"])
def test_ex4_student_forward(gated):
    s = perturbed_student(gated)
    x = torch.randn(2, 32, 16, generator=torch.Generator().manual_seed(2))
    y = s(x)
    check_shape("LinearAttention(x (2, 32, 16))", y, x.shape)
    err = rel_err(y, ref_student(s, x))
    if err > TOL:
        fail(f"LinearAttention differs from the reference (relative error {err:.1e}): q, k, v = c_attn(x) split per "
             f"head; phi = hedgehog_feature_map with fmap_q, fmap_k; " + ("log g_t = logsigmoid(gate(x)) / 16 per head; " if gated else "")
             + f"o_t = q_t^T S_t / (q_t . z_t + {EPS:g}) (normalised); then c_proj")

@pytest.mark.parametrize("gated", [False, True], ids=["hedgehog", "gla"])
def test_ex4_student_is_causal(gated):
    s = perturbed_student(gated)
    x = torch.randn(1, 32, 16, generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[:, 20:] = torch.randn(1, 12, 16)  # change the future only
    y, y2 = s(x), s(x2)
    change = (y - y2).abs().amax(dim=(0, 2)) / y.abs().amax()  # (T,) largest change at each t, relative
    if (change[:20] > 1e-6).any():
        fail(f"LinearAttention is not causal: changing tokens 20.. changed the output at t={int((change[:20] > 1e-6).nonzero()[0])}")
    if (change[20:] < 1e-3).any():
        fail("LinearAttention ignores its own token: changing a token left its output unchanged")

# ---- exercise 5: blockwise local distillation's loss (paper §3.1) ----

def ref_distill_loss(block, student, x, target):
    """The teacher block with the student for its attention, written out (pre-LN nanoGPT block)."""
    h = x + student(block.ln_1(x))
    out = h + block.mlp(block.ln_2(h))
    return F.mse_loss(out.float(), target.float())

def distill_case():
    """A frozen teacher block (as distillation freezes the model), its input and output, and a
    trainable student. The teacher's attention is left trainable on purpose: if it gets a
    gradient, it was run in the student's place."""
    model = tiny_gpt(n_layer=2, seed=4)
    model.requires_grad_(False)
    block = model.transformer.h[1]
    with torch.no_grad():  # a trained teacher's attention moves the residual stream; a fresh one barely does
        for w in (block.attn.c_attn.weight, block.attn.c_proj.weight):
            w.normal_(0, 0.5, generator=torch.Generator().manual_seed(4))
    block.attn.requires_grad_(True)
    student = dtr.LinearAttention(block.attn, True)
    with torch.no_grad():  # a student a few steps into training, not the teacher's copy
        student.fmap_q.add_(0.3 * torch.randn(student.fmap_q.shape, generator=torch.Generator().manual_seed(5)))
    x = torch.randn(3, 32, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        target = block(x)  # the teacher block's output: a fixed target
    return block, student.train(), x, target

def check_distill_value(loss, want, x):
    """Fail unless `loss` is a 0-dim fp32 tensor of the reference's value `want`, naming the mistake
    where the value gives it away: 0 (the teacher ran), or the mean times the count of a sum."""
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        fail(f"distill_loss should return a scalar tensor (0-dim), got {getattr(loss, 'shape', type(loss))}")
    if loss.dtype != torch.float32:
        fail(f"distill_loss should be computed in fp32 (.float() both sides), got {loss.dtype}")
    if abs(loss.item() - want.item()) <= TOL * want.item():
        return
    size = dict(zip("BTC", x.shape))  # (3, 32, 16): every product of a subset differs, so the ratio names the axes
    summed = [axes for r in (1, 2, 3) for axes in itertools.combinations("BTC", r)
              if math.isclose(loss.item(), math.prod(size[a] for a in axes) * want.item(), rel_tol=TOL)]
    if abs(loss.item()) < 1e-6 * want.item():
        hint = " It is 0: the block ran its own (teacher) attention, which reproduces the target exactly."
    elif summed:
        hint = (f" It is {loss.item() / want.item():.0f} times the reference: you summed the squared difference over "
                f"{', '.join(summed[0])} instead of averaging it. The loss is the mean over B, T and C (.mean(), or "
                f"F.mse_loss's default), so that its size does not depend on the batch size, the context or the width.")
    else:
        hint = (" The loss is the mean over B, T and C of (block output - target)^2, where the block output is "
                "h = x + student(ln_1(x)), then h + mlp(ln_2(h)): the whole block, not the attention alone.")
    fail(f"distill_loss = {loss.item():.6g}, the reference gives {want.item():.6g}.{hint}")

def test_ex5_distill_loss_value():
    block, student, x, target = distill_case()
    loss = get("distill_loss")(block, student, x, target)
    check_distill_value(loss, ref_distill_loss(block, student, x, target), x)

def test_ex5_only_the_student_learns():
    block, student, x, target = distill_case()
    ref = copy.deepcopy(student)
    loss = get("distill_loss")(block, student, x, target)
    # under torch.no_grad(), backward() would only say "element 0 of tensors does not require grad"
    if isinstance(loss, torch.Tensor) and not loss.requires_grad:
        fail("distill_loss returned a loss without gradients (requires_grad is False): it was computed under "
             "torch.no_grad() (or from a detached output), so backward() cannot reach the student. Only the target "
             "is made without gradients; run the block with the student in it outside torch.no_grad()")
    loss.backward()
    want = ref_distill_loss(block, ref, x, target)
    want.backward()
    if any(p.grad is not None for p in block.attn.parameters()):
        fail("the teacher's attention got a gradient: distill_loss ran block.attn (the teacher) where the student belongs")
    check_distill_value(loss, want, x)  # the value first: a wrong loss has wrong gradients, and its value says why
    for (name, p), p_ref in zip(student.named_parameters(), ref.parameters()):
        if p.grad is None:
            fail(f"the student's {name} got no gradient: is the student in the graph (not under torch.no_grad, not detached)?")
        if rel_err(p.grad, p_ref.grad) > TOL:
            fail(f"the gradient of the student's {name} differs from the reference's "
                 f"(relative error {rel_err(p.grad, p_ref.grad):.1e})")
    for name, p in block.named_parameters():
        if not name.startswith("attn.") and (p.requires_grad or p.grad is not None):
            fail(f"distill_loss unfroze the teacher block's {name}: the LayerNorms and MLP stay frozen")

class Broken(torch.nn.Module):
    """A student whose forward fails, as a student under construction does."""
    def forward(self, x, cache=None):
        raise ValueError("broken student")

def test_ex5_block_gets_its_attention_back():
    block, student, x, target = distill_case()
    teacher_attn = block.attn
    get("distill_loss")(block, student, x, target)
    if block.attn is not teacher_attn:
        fail("after distill_loss, block.attn is not the teacher's attention: swap the student in for this call only")
    with contextlib.suppress(ValueError):
        get("distill_loss")(block, Broken(), x, target)
    if block.attn is not teacher_attn:
        fail("when the student raises, block.attn stays swapped: put the teacher back in a `finally:` (or a `with`)")

# ---- exercise 6: greedy replacement (Algorithm 1), M_best and M_opt ----

@pytest.fixture(scope="module")
def greedy_case():
    """A 4-layer teacher that has learned a periodic sequence, so damage to any layer costs loss,
    and 'students' whose cost is known in advance: the teacher's attention with c_proj scaled by
    1 + e. One layer gets e = 0, a free swap; the others random e, so the order is a real search."""
    model = tiny_gpt(n_layer=4, seed=1)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(20, (7,), generator=g).repeat(300)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(40):  # enough that the free swap is the best first move and the others hurt (loss 0.19 -> 0.31)
        loss = model(*get_batch(data, 32, 8, "cpu", g))[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(False)
    e = 0.3 + 1.7 * torch.rand(4, generator=g)
    e[torch.randint(4, (1,), generator=g)] = 0.0
    students = [copy.deepcopy(block.attn) for block in model.transformer.h]
    for s, ei in zip(students, e.tolist()):
        s.c_proj.weight.mul_(1 + ei)
    starts = torch.linspace(0, len(data) - 34, 24).long()
    batches = [windows(data, s, 32, "cpu") for s in starts.split(8)]
    return model, students, batches

def ref_loss(model, students, batches, linear):
    """Val loss of the hybrid with `linear` swapped, by plain setattr and a whole forward."""
    with dtr.hybrid(model.transformer.h, linear, students):
        return val_loss(model, batches)

def handed_back(fn, model, *args):
    """get(fn)(model, *args), failing unless it hands the model back as it got it."""
    own = [b.attn for b in model.transformer.h]
    out = get(fn)(model, *args)
    if [b.attn for b in model.transformer.h] != own:  # modules compare by identity: the very same ones
        fail(f"{fn} should hand the model back as it got it: every block.attn restored")
    return out

def test_ex6_greedy_round(greedy_case):
    model, students, batches = greedy_case
    for linear in ([], [2], [3, 0]):
        with dtr.hybrid(model.transformer.h, linear, students):  # the current hybrid, as greedy_replace holds it
            got = handed_back("greedy_round", model, students, batches, list(linear))
        want = {i: ref_loss(model, students, batches, linear + [i]) for i in range(4) if i not in linear}
        if not isinstance(got, dict) or sorted(got) != sorted(want):
            fail(f"greedy_round(linear={linear}) should return {{layer: val loss}} for the still-full layers "
                 f"{sorted(want)}, got {got!r}")
        for i in want:
            if abs(got[i] - want[i]) > TOL * want[i]:
                fail(f"greedy_round(linear={linear}): layer {i}'s loss is {got[i]:.5f}, the reference {want[i]:.5f}: "
                     f"the candidate is the current hybrid (layers {linear} linear) with layer {i} swapped too, "
                     f"scored as the mean next-token loss over all batches")

def test_ex6_greedy_replace(greedy_case):
    model, students, batches = greedy_case
    out = handed_back("greedy_replace", model, students, batches)
    if not (isinstance(out, tuple) and len(out) == 2):
        fail("greedy_replace should return (teacher_loss, trajectory)")
    teacher_loss, traj = out
    want_teacher = ref_loss(model, students, batches, [])
    if abs(teacher_loss - want_teacher) > TOL * want_teacher:
        fail(f"teacher_loss is {teacher_loss:.5f}, the reference {want_teacher:.5f}: the val loss with no layer swapped")
    if len(traj) != 4:
        fail(f"the trajectory should have one entry per round, 4 for 4 layers, got {len(traj)}")
    linear = []
    for k, t in enumerate(traj, start=1):
        missing = {"k", "layer", "val_loss", "rel_change", "candidates"} - set(t)
        if missing:
            fail(f"round {k}'s entry lacks {sorted(missing)}")
        cand = {i: ref_loss(model, students, batches, linear + [i]) for i in range(4) if i not in linear}
        best = min(cand, key=cand.get)  # Algorithm 1: the swap that hurts least
        if t["layer"] != best:
            fail(f"round {k} chose L{t['layer']}, but L{best} has the lowest loss "
                 f"({', '.join(f'L{i} {l:.4f}' for i, l in cand.items())}): swap the layer whose swap hurts least")
        if t["k"] != k:
            fail(f"round {k}'s entry has k={t['k']}: k counts the linear layers after the round, 1..L")
        if abs(t["val_loss"] - cand[best]) > TOL * cand[best]:
            fail(f"round {k}'s val_loss is {t['val_loss']:.5f}, the hybrid it names scores {cand[best]:.5f}")
        if abs(t["rel_change"] - (t["val_loss"] / teacher_loss - 1)) > 1e-9:
            fail(f"round {k}'s rel_change should be val_loss / teacher_loss - 1")
        want_c = [cand.get(i) for i in range(4)]
        if len(t["candidates"]) != 4 or any((a is None) != (b is None) or (b is not None and abs(a - b) > TOL * b)
                                            for a, b in zip(t["candidates"], want_c)):
            fail(f"round {k}'s candidates should list every layer's loss this round, None where already linear: "
                 f"want {[None if c is None else round(c, 4) for c in want_c]}")
        linear.append(best)

def ref_select(teacher_loss, traj, tol):
    """M_best and M_opt by a plain walk over the trajectory."""
    order = [t["layer"] for t in traj]
    best_k, best_loss, opt_k = 0, teacher_loss, 0
    for t in traj:  # k rises along the walk, so `<=` hands ties to more linear layers
        if t["val_loss"] <= best_loss:
            best_k, best_loss = t["k"], t["val_loss"]
        if t["val_loss"] <= (1 + tol) * teacher_loss:
            opt_k = t["k"]  # not `break` at the first miss: the loss need not rise monotonically
    pick = lambda k: {"linear_layers": sorted(order[:k]), "val_loss": ([teacher_loss] + [t["val_loss"] for t in traj])[k]}
    return pick(best_k), pick(opt_k)

def test_ex6_select_models():
    g = torch.Generator().manual_seed(7)
    for case in range(200):
        L = int(torch.randint(1, 7, (1,), generator=g))
        teacher_loss = 1.0
        losses = (1 + 0.05 * torch.randn(L, generator=g)).tolist()
        if case % 3 == 0 and L > 1:  # exact ties, including with the teacher
            losses[int(torch.randint(L, (1,), generator=g))] = min(losses + [teacher_loss])
        order = torch.randperm(L, generator=g).tolist()
        traj = [{"k": k + 1, "layer": order[k], "val_loss": losses[k]} for k in range(L)]
        tol = [0.0, 0.02, 0.05][case % 3]
        got = get("select_models")(teacher_loss, traj, tol)
        want = ref_select(teacher_loss, traj, tol)
        for name, a, b, hint in [("M_best", got[0], want[0], "the lowest val loss seen, the teacher (k = 0) included; "
                                  "ties go to the model with more linear layers"),
                                 ("M_opt", got[1], want[1], "the most linear layers with val loss <= (1 + tolerance) "
                                  "x teacher loss, anywhere along the trajectory (not the last before the first miss); "
                                  "the teacher if none")]:
            if a != b:
                fail(f"{name} is {a}, expected {b} for teacher loss 1.0, tolerance {tol}, trajectory "
                     f"{[(t['layer'], round(t['val_loss'], 4)) for t in traj]} (layer, val loss): {name} is {hint}; "
                     f"linear_layers sorted")

# ---- exercise 7: reverse greedy, an open experiment ----

def test_ex7_reverse_greedy_trajectory_is_consistent(greedy_case):
    # no single right answer: only the shape, and that every reported loss is the loss of the
    # hybrid the entry names, so that trajectories from different strategies can be compared
    model, students, batches = greedy_case
    traj = handed_back("reverse_greedy", model, students, batches)
    if not isinstance(traj, list) or len(traj) != 4:
        fail(f"reverse_greedy should return a list with one entry per round, 4 for 4 layers, got {traj!r:.80}")
    restored = []
    for r, t in enumerate(traj):
        if not {"k", "layer", "val_loss"} <= set(t):
            fail(f"round {r + 1}'s entry should hold k, layer and val_loss, got {sorted(t)}")
        if t["layer"] in restored or not 0 <= t["layer"] < 4:
            fail(f"round {r + 1} restores L{t['layer']}, which is not a still-linear layer (restored so far: {restored})")
        restored.append(t["layer"])
        if t["k"] != 4 - len(restored):
            fail(f"round {r + 1}'s k is {t['k']}: k counts the linear layers left after the round, {4 - len(restored)}")
        linear = [i for i in range(4) if i not in restored]
        want = ref_loss(model, students, batches, linear)
        if abs(t["val_loss"] - want) > TOL * want:
            fail(f"round {r + 1}'s val_loss is {t['val_loss']:.5f}, but the hybrid it names (linear layers {linear}) "
                 f"scores {want:.5f}")
