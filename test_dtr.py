"""
Tests: python -m pytest -q test_dtr.py   (CPU only, no network, a few minutes)

Floats are compared by relative error ||a - b|| / ||b|| against a reference computed in
fp64 (or fp32 where that is the reference): fp32 through a chunked sum of a few hundred
terms keeps about 1e-6 relative accuracy, so 1e-5 is the tolerance unless said otherwise.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

os.environ["TRITON_INTERPRET"] = "1"  # Triton kernels run on the CPU; must be set before triton is imported
HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared")  # offline copies beside the checkout, where there are any
if os.path.isdir(os.path.join(SHARED, "tiktoken_cache")):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken_cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

import dtr  # noqa: E402
import kernel  # noqa: E402
import train_teacher  # noqa: E402

def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

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

def forward_backward(impl, inputs, dtype, normalize, chunk_size, final_state=True):
    """Output, final state and the gradients of a random projection of both w.r.t. every input."""
    ins = [x.to(dtype, copy=True).requires_grad_() if x is not None else None for x in inputs]
    q, k, v, log_g, S0 = ins
    out = kernel.linear_attention(q, k, v, log_g, normalize, S0, final_state, chunk_size, impl)
    o, S = out if final_state else (out, None)
    g = torch.Generator().manual_seed(1)  # same projection for every impl
    loss = (o * torch.randn(o.shape, generator=g).to(dtype)).sum()
    if S is not None:
        loss = loss + (S * torch.randn(S.shape, generator=g).to(S.dtype)).sum()
    loss.backward()
    return [t for t in [o, S] + [x.grad for x in ins if x is not None] if t is not None]

# T: 1 step, one short of a chunk, exactly one chunk, one past it, several ragged chunks;
# D = 48 and Dv + 1 exercise the non-power-of-two masks; Dv = 100 spans two Triton value blocks.
CASES = [  # T, D, Dv, gated, with_state, normalize, chunk_size, final_state
    (1, 16, 16, True, True, True, 16, True),
    (63, 16, 16, True, True, True, 32, True),
    (64, 16, 16, False, False, False, 64, True),
    (65, 16, 16, True, True, False, 32, False),
    (65, 48, 20, True, False, True, 16, True),
    (200, 16, 16, False, True, True, 32, True),
    (200, 16, 16, True, False, False, 32, True),
    (70, 24, 100, True, True, True, 32, True),
]

@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("T,D,Dv,gated,with_state,normalize,C,final_state", CASES)
def test_matches_naive(impl, T, D, Dv, gated, with_state, normalize, C, final_state):
    inputs = make_inputs(T=T, D=D, Dv=Dv, gated=gated, with_state=with_state, normalize=normalize)
    ref = forward_backward("naive", inputs, torch.float64, normalize, C, final_state)
    got = forward_backward(impl, inputs, torch.float32, normalize, C, final_state)
    assert len(got) == len(ref)  # o, [S], dq, dk, dv, [dlog_g], [dS0]
    errs = [rel_err(a, b) for a, b in zip(got, ref)]
    assert max(errs) <= TOL, errs

@pytest.mark.parametrize("impl", IMPLS)
def test_split_and_resume(impl):
    """Run the first half, hand its final state to the second half: same as one pass."""
    q, k, v, log_g, _ = make_inputs(T=100, with_state=False)
    o, S = kernel.linear_attention(q, k, v, log_g, output_final_state=True, chunk_size=32, impl=impl)
    o1, S1 = kernel.linear_attention(q[:, :, :37], k[:, :, :37], v[:, :, :37], log_g[:, :, :37],
                                     output_final_state=True, chunk_size=32, impl=impl)
    o2, S2 = kernel.linear_attention(q[:, :, 37:], k[:, :, 37:], v[:, :, 37:], log_g[:, :, 37:],
                                     initial_state=S1, output_final_state=True, chunk_size=32, impl=impl)
    assert rel_err(torch.cat([o1, o2], dim=2), o) <= TOL and rel_err(S2, S) <= TOL

@pytest.mark.parametrize("impl", IMPLS)
def test_strided_inputs(impl):
    """Non-contiguous views, as a model's head split (B, T, H, D) -> (B, H, T, D) makes them."""
    inputs = make_inputs(T=50)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in inputs[:4]]
    strided.append(inputs[4].transpose(-1, -2).contiguous().transpose(-1, -2))
    assert not any(x.is_contiguous() for x in strided)
    for a, b in zip(forward_backward(impl, strided, torch.float32, True, 16), forward_backward("naive", inputs, torch.float64, True, 16)):
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
    (The Triton interpreter cannot run bf16 dots; on GPU the same check applies to impl='triton'.)"""
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

# ---- the students ----

def tiny_gpt(n_layer=3, seed=0):
    torch.manual_seed(seed)
    return dtr.GPT(dtr.GPTConfig(block_size=32, vocab_size=20, n_layer=n_layer, n_head=2, n_embd=16)).eval()

@pytest.mark.parametrize("gated", [False, True])
def test_student_block_is_causal(gated):
    model = tiny_gpt()
    student = dtr.LinearAttention(model.transformer.h[0].attn, gated)
    x = torch.randn(1, 32, 16)
    x2 = x.clone()
    x2[:, 20:] = torch.randn(1, 12, 16)  # change the future only
    y, y2 = model.transformer.h[0](x, attn=student), model.transformer.h[0](x2, attn=student)
    assert torch.allclose(y[:, :20], y2[:, :20], atol=1e-6)
    assert not torch.allclose(y[:, 20:], y2[:, 20:], atol=1e-3)

def test_student_matches_trivially_linearisable_block():
    # with W_q = 0 softmax attention is the causal mean of v; so is the Hedgehog student, since
    # phi(0) is uniform and every phi(k) sums to 1: the copy is exact before any training
    model = tiny_gpt()
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight[:16] = 0
        attn.c_attn.bias[:16] = 0
    student = dtr.LinearAttention(attn, gated=False)
    x = torch.randn(4, 32, 16)
    block = model.transformer.h[0]
    assert rel_err(block(x, attn=student) - x, block(x) - x) < 1e-5

@pytest.mark.parametrize("linear", [[], [0, 2], [0, 1, 2]])  # teacher, hybrid, all-linear
def test_cached_generation_equals_plain_forward(linear):
    # prefill 70 tokens (past the 64-token chunk boundary), 5 more at once, then one token at a time:
    # every position's logits must equal those of one uncached forward over the whole sequence
    torch.manual_seed(0)
    model = dtr.GPT(dtr.GPTConfig(block_size=100, vocab_size=20, n_layer=3, n_head=2, n_embd=16)).eval()
    students = dtr.make_students(model, gated=True)
    for s in students:  # a gate that really decays, so the state hand-off is exercised
        torch.nn.init.normal_(s.gate.weight, std=1.0)
    dtr.swap_in(model, linear, students)
    idx = torch.randint(20, (2, 100))
    full, _ = model(idx)
    caches = model.new_caches(2, 100)
    steps = [model(idx[:, :70], caches=caches)[0], model(idx[:, 70:75], caches=caches)[0]]  # prompt, then a few more at once
    steps += [model(idx[:, t:t + 1], caches=caches)[0] for t in range(75, 100)]
    assert rel_err(torch.cat(steps, dim=1), full) < 1e-5
    assert caches[0]["pos"] == 100

# ---- greedy replacement on a constructed case ----

def periodic_gpt(n_layer):
    """A teacher that has learned a periodic sequence, so any damage to a layer costs loss."""
    model = tiny_gpt(n_layer=n_layer, seed=1)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(20, (7,), generator=g).repeat(300)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        _, loss = model(*dtr.get_batch(data, 32, 8, "cpu", g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False), data

def test_greedy_follows_algorithm_1():
    # "students" are the teacher's own attention with c_proj scaled by 1 + eps: eps = 0 is a free swap
    model, data = periodic_gpt(n_layer=4)
    students = [dtr.copy.deepcopy(block.attn) for block in model.transformer.h]
    for s, e in zip(students, [0.5, 0.0, 2.0, 1.0]):
        s.c_proj.weight.mul_(1 + e)
    batches = dtr.fixed_batches(data, 32, 8, 3, "cpu")
    teacher_attn = [b.attn for b in model.transformer.h]
    teacher_loss, traj = dtr.greedy_replace(model, students, batches)
    assert [b.attn for b in model.transformer.h] == teacher_attn  # greedy hands the teacher back
    assert traj[0]["layer"] == 1 and traj[0]["val_loss"] == pytest.approx(teacher_loss, rel=1e-6)
    # every round's choice is the argmin of a plain, uncached forward over the candidates
    linear = []
    for t in traj:
        losses = {}
        for i in sorted(set(range(4)) - set(linear)):
            with dtr.hybrid(model, linear + [i], students):
                losses[i] = dtr.val_loss(model, batches)
        assert t["layer"] == min(losses, key=losses.get)
        assert t["val_loss"] == pytest.approx(losses[t["layer"]], rel=1e-5)
        assert t["rel_change"] == pytest.approx(t["val_loss"] / teacher_loss - 1)
        linear.append(t["layer"])
    assert max(t["val_loss"] for t in traj) > 1.5 * teacher_loss  # the damage is real, the order matters

def test_placement_baselines_choose_the_stated_layers():
    # a 4-layer model whose "students" zero their layer's attention: each baseline's layer choices
    # are known in advance, and each of its losses is the plain val loss of the model it names
    model = tiny_gpt(n_layer=4, seed=2)
    teacher_attn = [block.attn for block in model.transformer.h]
    students = [Zero() for _ in range(4)]
    batches = dtr.fixed_batches(torch.randint(20, (2000,), generator=torch.Generator().manual_seed(0)), 32, 4, 2, "cpu")
    traj = [{"val_loss": 0.0, "candidates": [3.0, 1.0, 4.0, 2.0]}] * 4  # round 1: L1 best, then L3, L0, L2
    b = dtr.placement_baselines(model, students, batches, traj, n_random=3)
    assert [block.attn for block in model.transformer.h] == teacher_attn  # the teacher is handed back
    assert b["uniform_layers"] == [[2], [1, 3], [0, 2, 3], [0, 1, 2, 3]]
    assert b["importance_order"] == [1, 3, 0, 2]
    assert all(sorted(order) == [0, 1, 2, 3] for order in b["random_orders"])
    for k, layers in ((1, [1]), (2, [1, 3]), (3, [0, 1, 3])):
        with dtr.hybrid(model, layers, students):
            assert b["importance"][k - 1] == pytest.approx(dtr.val_loss(model, batches), rel=1e-6)
    assert b["uniform"][3] == pytest.approx(b["importance"][3]) == pytest.approx(b["random_mean"][3])  # all swapped

class Zero(torch.nn.Module):
    """A stand-in student that removes its layer's attention."""
    def forward(self, x, cache=None):
        return torch.zeros_like(x)

def test_select_models():
    traj = [{"k": 1, "layer": 2, "val_loss": 0.99}, {"k": 2, "layer": 0, "val_loss": 0.99},
            {"k": 3, "layer": 1, "val_loss": 1.015}, {"k": 4, "layer": 3, "val_loss": 1.2}]
    m_best, m_opt = dtr.select_models(1.0, traj, tolerance=0.02)
    assert m_best == {"linear_layers": [0, 2], "val_loss": 0.99}  # tie: more linear layers wins
    assert m_opt == {"linear_layers": [0, 1, 2], "val_loss": 1.015}
    _, m_opt = dtr.select_models(1.0, traj, tolerance=0.0)
    assert m_opt["linear_layers"] == [0, 2]
    _, m_opt = dtr.select_models(0.5, traj, tolerance=0.0)
    assert m_opt == {"linear_layers": [], "val_loss": 0.5}  # nothing within tolerance: the teacher

# ---- target tasks ----

def test_teacher_copy_rows_are_a_sequence_shown_twice():
    # training rows with their first half repeated must still be (input, next token) pairs of one
    # sequence, a b c d e a b c d e: y is x shifted by one, continuing with the window's next token
    x = torch.arange(22).view(2, 11)
    x2, y2 = dtr.repeat_first_half(x, x + 1, 1)
    assert x2[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5] and torch.equal(y2[0, :-1], x2[0, 1:])
    assert y2[0, -1] == 6 and torch.equal(x2[1], x[1]) and torch.equal(y2[1], x[1] + 1)

def test_copy_batches_repeat_the_passage_and_score_only_the_second_copy():
    data = torch.randint(20, (1000,), generator=torch.Generator().manual_seed(0))
    (x, y), = dtr.copy_batches(data, 32, 4, 1, "cpu")
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 16:], x[:, :16])
    assert (y[:, :16] == -1).all() and (y[:, -1] == -1).all()
    assert torch.equal(y[:, 16:-1], x[:, 17:])  # next-token targets, inside the second copy
    # the model's loss skips the -1 targets: it is the mean over the 15 scored positions per row
    logits, loss = tiny_gpt()(x, y)
    ref = torch.nn.functional.cross_entropy(logits[:, 16:-1].flatten(0, 1), y[:, 16:-1].flatten())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)

class Copier(torch.nn.Module):
    """Predicts, at position t, the token at t + 1 - shift: with shift = half a context, a
    perfect induction head on the copy task."""
    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def forward(self, idx, targets):
        logits = 30.0 * torch.nn.functional.one_hot(idx.roll(self.shift - 1, dims=1), 20).float()  # (B, T, 20)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

def test_perfect_copier_has_near_zero_copy_loss():
    batches = dtr.copy_batches(torch.randint(20, (2000,), generator=torch.Generator().manual_seed(0)), 32, 8, 2, "cpu")
    assert dtr.val_loss(Copier(shift=16), batches) < 1e-6
    assert dtr.val_loss(Copier(shift=15), batches) > 10  # off by one: the mask and alignment matter

class Damaged(torch.nn.Module):
    """A "student": the teacher's attention plus a large fixed vector at positions [lo, hi)."""
    def __init__(self, attn, lo, hi):
        super().__init__()
        self.attn, self.lo, self.hi = attn, lo, hi
        self.kick = 3 * torch.randn(16, generator=torch.Generator().manual_seed(lo))

    def forward(self, x, cache=None):
        y = self.attn(x).clone()
        y[:, self.lo:self.hi] += self.kick
        return y

def test_each_task_keeps_the_layer_it_needs(tmp_path):
    # 2 layers, T = 32. The L0 student is wrong only at positions >= 16, which by causality never
    # reach positions < 16; the L1 student is wrong only at positions < 16, and nothing follows L1.
    # "early" scores positions < 16 and must keep L1; "copy" scores >= 16 and must keep L0.
    model, data = periodic_gpt(n_layer=2)
    students = [Damaged(model.transformer.h[0].attn, 16, 32), Damaged(model.transformer.h[1].attn, 0, 16)]
    early = [(x, y.masked_fill(torch.arange(32) >= 16, -1)) for x, y in dtr.fixed_batches(data, 32, 8, 2, "cpu")]
    tasks = {"early": early, "copy": dtr.copy_batches(data, 32, 8, 2, "cpu")}
    out = dtr.run_tasks(model, students, tasks, dtr.Config(tolerance=0.02), str(tmp_path))
    res, cross = out["tasks"], out["tasks_cross_eval"]
    assert res["early"]["m_opt"]["linear_layers"] == [0] and res["copy"]["m_opt"]["linear_layers"] == [1]
    assert [t["layer"] for t in res["early"]["trajectory"]] == [0, 1]
    assert [t["layer"] for t in res["copy"]["trajectory"]] == [1, 0]
    # diagonal: each M_opt scores what its own search said; off it, the other task's hybrid does damage
    for i, name in enumerate(cross["rows"]):
        assert cross["loss"][i][i] == pytest.approx(res[name]["m_opt"]["val_loss"], rel=1e-5)
        assert cross["loss"][1 - i][i] > 1.5 * res[name]["teacher_loss"]
    assert res["copy"]["teacher_plain_loss"] > 0 and os.path.exists(tmp_path / "tasks.png")

# ---- data ----

@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder holding tiny Shakespeare: the shared offline copy, else downloaded once."""
    d = tmp_path_factory.mktemp("data")
    src = os.path.join(SHARED, "data", "shakespeare", "input.txt")
    if not os.path.exists(src):
        src = os.path.join(HERE, "data", "shakespeare", "input.txt")
        if not os.path.exists(src):
            dtr.download(dtr.SHAKESPEARE_URL, src)
    for name in ("shakespeare", "shakespeare_char"):
        os.makedirs(d / name)
        shutil.copy(src, d / name / "input.txt")
    return str(d)

def test_char_data_facts(data_dir):
    train, val, meta = dtr.load_data(dtr.Config(dataset="shakespeare_char", data_dir=data_dir))
    assert (len(meta["vocab"]), len(train), len(val)) == (65, 1_003_854, 111_540)
    assert dtr.decode(val[:200].tolist(), meta) == open(os.path.join(data_dir, "shakespeare_char", "input.txt")).read()[1_003_854:1_004_054]

def test_bpe_data_facts(data_dir):
    cfg = dtr.Config(dataset="shakespeare", data_dir=data_dir)
    train, val, meta = dtr.load_data(cfg)
    assert (len(meta["vocab"]), len(train), len(val)) == (11_706, 301_966, 36_059)
    text = open(os.path.join(data_dir, "shakespeare", "input.txt")).read()
    assert dtr.decode(train[:100].tolist(), meta) == text[:len(dtr.decode(train[:100].tolist(), meta))]
    assert torch.equal(dtr.load_data(cfg)[0], train)  # the cached splits give the same tokens

# ---- end to end (tiny preset) ----

@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    args = ["--preset", "tiny", "--data_dir", data_dir, "--out_dir", out, "--sample_tokens", "20"]
    report = dtr.run(dtr.parse_args(args))
    return args, out, report

def test_end_to_end_report(tiny_run):
    args, out, report = tiny_run
    with open(os.path.join(out, "gla", "report.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(report))
    L = saved["n_layer"]
    for key in ("dataset", "student", "device", "config", "tolerance", "timings_s"):
        assert key in saved
    assert len(saved["distill"]["mse"]) == len(saved["distill"]["rel_mse"]) == L
    assert [t["k"] for t in saved["trajectory"]] == list(range(1, L + 1))
    assert sorted(t["layer"] for t in saved["trajectory"]) == list(range(L))
    teacher = saved["teacher"]["val_loss"]
    assert saved["m_opt"]["val_loss"] <= (1 + saved["tolerance"]) * teacher + 1e-9
    assert saved["m_best"]["val_loss"] <= teacher
    assert "tasks" not in saved  # the single-task report is unchanged by the task feature
    # the saved hybrid reloads with students where the report says, and scores what it says
    model, ckpt = dtr.load_model(os.path.join(out, "gla", "m_opt.pt"), "cpu")
    assert model.linear_layers() == saved["m_opt"]["linear_layers"]
    train, val, meta = dtr.load_data(dtr.parse_args(args))
    batches = dtr.fixed_batches(val, 64, 8, 2, "cpu")
    assert dtr.val_loss(model, batches) == pytest.approx(saved["m_opt"]["val_loss"], rel=1e-5)

def test_rerun_reuses_teacher_and_students(tiny_run, capsys):
    args, out, report = tiny_run
    again = dtr.run(dtr.parse_args(args))
    assert again["timings_s"]["teacher"] == 0
    assert "distill  reusing" in capsys.readouterr().out
    assert again["trajectory"] == report["trajectory"]

def test_distillation_lowers_mse(tiny_run, data_dir):
    args, out, _ = tiny_run
    cfg = dtr.parse_args(args)
    model, _ = dtr.load_model(os.path.join(out, "teacher.pt"), "cpu")
    train, val, _ = dtr.load_data(cfg)
    batches = dtr.fixed_batches(val, cfg.block_size, cfg.batch_size, 2, "cpu")
    students = dtr.make_students(model, gated=True)
    before, _ = dtr.block_mse(model, students, batches, "cpu", False)
    dtr.distill_blocks(model, students, train, cfg, "cpu", False)
    after, _ = dtr.block_mse(model, students, batches, "cpu", False)
    assert sum(after) < 0.5 * sum(before)

def test_tasks_end_to_end(tiny_run, data_dir, tmp_path):
    args, out, _ = tiny_run
    (tmp_path / "mine.txt").write_text(open(os.path.join(data_dir, "shakespeare_char", "input.txt")).read()[:3000])
    r = dtr.run(dtr.parse_args(args + ["--task", "lm,copy", "--task_text", str(tmp_path / "mine.txt")]))
    assert list(r["tasks"]) == r["tasks_cross_eval"]["rows"] == ["lm", "copy", "mine.txt"]
    lm = r["tasks"]["lm"]  # the lm task is the single-task search, not a second one
    assert (lm["teacher_loss"], lm["trajectory"], lm["m_opt"]) == (r["teacher"]["val_loss"], r["trajectory"], r["m_opt"])
    for i, t in enumerate(r["tasks"].values()):
        assert r["tasks_cross_eval"]["loss"][i][i] == pytest.approx(t["m_opt"]["val_loss"], rel=1e-5)
    assert os.path.exists(os.path.join(out, "gla", "tasks.png")) and "| mine.txt |" in dtr.results_markdown([r], [], [])

def test_decode_speedups_compare_each_model_in_its_faster_mode():
    """The README's speed-ups: eager against eager, and each model in its faster mode (here the
    teacher is faster eager, the linear model compiled), never a slowed-down teacher."""
    row = lambda model, eager, compiled, cache: {"model": model, "context": 8192, "prefill_s": 0.1, "cache_bytes": cache,
                                                 "decode_tok_s": eager, "decode_tok_s_batch8": 8 * eager,
                                                 "decode_tok_s_compiled": compiled, "decode_tok_s_batch8_compiled": 8 * compiled}
    bench = {"student": "gla", "n_layer": 6, "n_embd": 128, "new_tokens": 32, "repeats": 5, "machine": "test",
             "batch": 8, "compiled": True, "linear": {"m_opt": 3, "all_linear": 6},
             "rows": [row("teacher", 100.0, 80.0, 1000), row("m_opt", 150.0, 200.0, 500), row("all_linear", 200.0, 400.0, 10)]}
    text = dtr.results_markdown([], [bench], [])
    assert "| 8192 | 2.0x | 2.0x | 4.0x | 4.0x | 100x |" in text  # all_linear: 200 / 100 eager, 400 / 100 best
    assert "| 8192 | 1.5x | 1.5x | 2.0x | 2.0x | 2x |" in text  # m_opt

# ---- bad input: one clear message, exit code 2, nothing half-written ----

def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        dtr.main(args)
    assert e.value.code == 2
    return capsys.readouterr().err

def test_bad_inputs(tiny_run, data_dir, tmp_path, capsys):
    args, out, _ = tiny_run
    base = ["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(tmp_path / "o")]
    assert "neither a built-in dataset" in run_cli(base + ["--dataset", "nope"], capsys)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \xff")
    assert "as UTF-8 text" in run_cli(base + ["--dataset", str(tmp_path / "bin.txt")], capsys)
    (tmp_path / "short.txt").write_text("too short for a context of 64 characters")
    assert "fewer than the context" in run_cli(base + ["--dataset", str(tmp_path / "short.txt")], capsys)
    assert "outside [0, 1)" in run_cli(base + ["--tolerance", "1.5"], capsys)
    assert "comma-separated list of lm, copy" in run_cli(base + ["--task", "lm,recall"], capsys)
    (tmp_path / "odd.txt").write_text("caf\u00e9 " * 20)
    assert "'\u00e9', which is not in the teacher's char vocabulary" in run_cli(base + ["--task_text", str(tmp_path / "odd.txt")], capsys)
    (tmp_path / "tiny.txt").write_text("abc" * 5)
    assert "has 15 tokens, fewer than the context" in run_cli(base + ["--task_text", str(tmp_path / "tiny.txt")], capsys)
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in run_cli(base + ["--device", "cuda"], capsys)
    assert "cannot load checkpoint" in run_cli(base + ["--sample", str(tmp_path / "missing.pt")], capsys)
    assert not os.path.exists(tmp_path / "o" / "gla" / "report.json")
    # a corrupt teacher checkpoint, and one trained with other settings
    bad = tmp_path / "corrupt"
    os.makedirs(bad)
    (bad / "teacher.pt").write_bytes(b"not a checkpoint")
    assert "cannot load checkpoint" in run_cli(base[:-1] + [str(bad)], capsys)
    assert "n_embd=48 but this run has n_embd=64" in run_cli(args + ["--n_embd", "64"], capsys)
    assert not any(f.endswith(".tmp") for _, _, fs in os.walk(tmp_path) for f in fs)

def test_nan_distillation_is_refused():
    model = tiny_gpt()
    model.requires_grad_(False)
    students = dtr.make_students(model, gated=True)
    with torch.no_grad():
        students[1].fmap_q.fill_(float("nan"))
    cfg = dtr.Config(block_size=32, distill_iters=3, distill_batch_size=2)
    with pytest.raises(dtr.DtrError, match="diverged"):
        dtr.distill_blocks(model, students, torch.randint(20, (500,)), cfg, "cpu", False)

# ---- torchrun, and runs that survive being killed ----

# child processes use this process's thread count, so their floats match the in-process tiny_run
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

def launch(cmd, returncode=0):
    r = subprocess.run(cmd, cwd=HERE, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == returncode, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr

def torchrun(script, args, nproc=2):
    return launch([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script] + args)

def weights(path, key="state_dict"):
    """Every tensor of a checkpoint (the teacher, or all students) as one flat fp64 vector."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sds = ckpt[key] if isinstance(ckpt[key], list) else [ckpt[key]]
    return torch.cat([v.double().flatten() for sd in sds for v in sd.values()])

def with_out_dir(args, out):
    return args[:args.index("--out_dir")] + ["--out_dir", str(out)] + args[args.index("--out_dir") + 2:]

def test_torchrun_teacher_step_matches_one_process(data_dir, tmp_path):
    # each of 2 processes takes 4 of the step's 8 sequences and DDP averages the gradients; one
    # process takes all 8, in 1 or in 2 micro-batches. Same global batch, so after 3 steps the
    # weights agree up to float summation order (observed ~1e-7 relative); a process training on
    # the wrong slice, or on the whole batch, moves them by ~1e-3.
    args = ["--preset", "tiny", "--data_dir", data_dir, "--max_iters", "3"]
    torchrun("train_teacher.py", args + ["--out_dir", str(tmp_path / "two")])
    train_teacher.main(args + ["--out_dir", str(tmp_path / "one")])
    train_teacher.main(args + ["--out_dir", str(tmp_path / "accum"), "--grad_accum", "2"])
    one = weights(tmp_path / "one" / "teacher.pt")
    init = torch.cat([v.double().flatten() for v in tiny_teacher_init(data_dir).values()])
    assert rel_err(one, init) > 1e-3  # the steps did move the weights
    for other in ("two", "accum"):
        assert rel_err(weights(tmp_path / other / "teacher.pt"), one) < 1e-5

def tiny_teacher_init(data_dir):
    cfg = dtr.parse_args(["--preset", "tiny", "--data_dir", data_dir])
    torch.manual_seed(cfg.seed)
    return dtr.GPT(dtr.GPTConfig(**dtr.model_args(cfg, dtr.load_data(cfg)[2]))).state_dict()

def test_torchrun_distill_and_greedy_match_one_process(tiny_run, tmp_path):
    # the blocks split over 2 processes (L0, L2 | L1, L3), each running the whole teacher on the
    # same batches, and each greedy round's candidates split the same way: the students and every
    # val loss equal the single-process run's (bitwise here: each is the same sequence of ops)
    args, out, report = tiny_run
    os.makedirs(tmp_path / "two")
    shutil.copy(os.path.join(out, "teacher.pt"), tmp_path / "two")
    log = torchrun("dtr.py", with_out_dir(args, tmp_path / "two"))
    assert "2 processes (torchrun)" in log and log.count("greedy   round 1/") == 1  # one log, from rank 0
    with open(tmp_path / "two" / "gla" / "report.json") as f:
        two = json.load(f)
    one = json.loads(json.dumps(report))
    assert two["trajectory"] == one["trajectory"]
    assert (two["m_best"], two["m_opt"]) == (one["m_best"], one["m_opt"])
    assert rel_err(weights(tmp_path / "two" / "gla" / "students.pt", "students"),
                   weights(os.path.join(out, "gla", "students.pt"), "students")) < 1e-6

# runs dtr.main, and stops the process at the n-th save of `target`: SIGINT just before it (as a
# Ctrl-C would), or SIGKILL halfway through writing its temp file (as a power cut would)
STOP_AT_SAVE = """
import os, signal, sys
import dtr
target, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
save, seen = dtr.atomic_save, []
def save_and_stop(obj, path):
    seen.extend([path] if path.endswith(target) else [])
    if len(seen) == n and path.endswith(target):
        if sig == signal.SIGKILL:
            with open(path + ".tmp", "wb") as f:
                f.write(b"the first half of a checkpoint")
        os.kill(os.getpid(), sig)
    save(obj, path)
dtr.atomic_save = save_and_stop
dtr.main(sys.argv[4:])
"""

def test_killed_runs_resume_to_the_same_result(tiny_run, tmp_path, capsys):
    args, out, report = tiny_run
    args = with_out_dir(args, tmp_path / "o")
    run_dir = tmp_path / "o" / "gla"
    def stop_at(target, n, sig):
        code = 130 if sig == "SIGINT" else -signal.SIGKILL
        return launch([sys.executable, "-c", STOP_AT_SAVE, target, str(n), sig] + args, code)
    # Ctrl-C in the teacher's 3rd checkpoint (step 30 of 200; tiny saves every 10 steps)
    log = stop_at("teacher.partial.pt", 3, "SIGINT")
    assert "interrupted; rerun the same command to resume from" in log and "teacher.partial.pt" in log
    # a checkpoint from other settings is refused, naming the setting
    assert "n_embd=48 but this run has n_embd=64" in run_cli(args + ["--n_embd", "64"], capsys)
    assert "written with lr=0.002 but this run has lr=0.001" in run_cli(args + ["--lr", "0.001"], capsys)
    # the rerun finishes the teacher and is killed writing the 2nd distillation checkpoint (step 20 of 50)
    log = stop_at("students.partial.pt", 2, "SIGKILL")
    assert "teacher  resuming" in log and "at step 20/200" in log
    assert os.path.exists(run_dir / "students.partial.pt.tmp")
    assert "distill_iters=50 but this run has distill_iters=60" in run_cli(args + ["--distill_iters", "60"], capsys)
    # the next is killed writing greedy's 2nd round
    log = stop_at("greedy.partial.json", 2, "SIGKILL")
    assert "distill  resuming" in log and "at step 10/50" in log
    log = launch([sys.executable, "dtr.py"] + args)
    assert "greedy   resuming" in log and "after round 1/4" in log
    # ... and ends where the uninterrupted run did, leaving no temp or partial file behind
    with open(run_dir / "report.json") as f:
        resumed = json.load(f)
    one = json.loads(json.dumps(report))
    assert resumed["trajectory"] == one["trajectory"] and resumed["m_opt"] == one["m_opt"]
    assert rel_err(weights(tmp_path / "o" / "teacher.pt"), weights(os.path.join(out, "teacher.pt"))) < 1e-6
    assert rel_err(weights(run_dir / "students.pt", "students"),
                   weights(os.path.join(out, "gla", "students.pt"), "students")) < 1e-6
    assert [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".tmp") or ".partial." in f] == []
