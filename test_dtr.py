"""
Tests of the method (dtr.py): python -m pytest -q test_dtr.py
CPU only, no network, a few minutes. kernel.py has its own tests (test_kernel.py), the teacher
(train_teacher.py: data, --init_from, torchrun) its own (test_train_teacher.py), the target tasks
theirs (test_tasks.py), the experiments
theirs (experiments/test_experiments.py); `python -m pytest -q` runs them all.

What is where: the students (causal, exact where the teacher is trivially linear, cached decoding
and sampling equal to the plain forward) -> greedy replacement and M_best/M_opt on constructed
cases whose answer is known -> end to end on the tiny preset -> the command line: bad settings
and broken files are one error line, torchrun and killed runs give the single-process result ->
the layout (imports form a tree). The target tasks (tasks.py) have theirs in test_tasks.py.

Floats are compared by relative error ||a - b|| / ||b||; 1e-5 unless said otherwise.
"""
import ast
import copy
import dataclasses
import glob
import json
import os
import shutil
import signal
import sys

import pytest
import torch

import dtr
import prepare
import tasks
import train_teacher
from conftest import HERE, fingerprint, launch, periodic_gpt, refused, refused_here, rel_err, tiny_gpt, torchrun, weights, with_out_dir
from plumbing import FORMAT, DtrError
from students import hedgehog_feature_map
from train_teacher import Cache, val_loss

# ---- the students ----

@pytest.mark.parametrize("kind", dtr.STUDENTS)
def test_student_block_is_causal(kind):
    model = tiny_gpt()
    student = dtr.make_students(model, kind)[0]
    x = torch.randn(1, 32, 16)
    x2 = x.clone()
    x2[:, 20:] = torch.randn(1, 12, 16)  # change the future only
    with dtr.hybrid(model.transformer.h, [0], [student]):
        y, y2 = model.transformer.h[0](x), model.transformer.h[0](x2)
    assert torch.allclose(y[:, :20], y2[:, :20], atol=1e-6)
    assert not torch.allclose(y[:, 20:], y2[:, 20:], atol=1e-3)

@pytest.mark.parametrize("kind", ["gla", "gdn"])
def test_gates_start_at_the_teachers_look_back(kind):
    # W_q = 0: every teacher head attends uniformly to the tokens so far, so query i looks back i / 2
    # tokens on average; over the second half of a 32-token window that is d = mean(i / 2, i = 16..31)
    # = 11.75, and the decay whose weights g^n look back d on average is g = d / (d + 1)
    model = tiny_gpt()
    for block in model.transformer.h:
        block.attn.c_attn.weight.data[:16] = 0
        if block.attn.c_attn.bias is not None:
            block.attn.c_attn.bias.data[:16] = 0
    students = dtr.make_students(model, kind)
    assert all(torch.equal(s.gate.bias, torch.full((2,), 4.0)) for s in students)  # gate_init=fixed: g ~ 0.999
    dtr.start_students(model, students, torch.randint(20, (3, 32), generator=torch.Generator().manual_seed(0)))
    d = torch.arange(16, 32).double().div(2).mean()
    g = torch.exp(torch.nn.functional.logsigmoid(students[1].gate.bias.double()) / 16)  # the model's own map, bias -> g
    assert torch.allclose(g, d / (d + 1), rtol=1e-4) and d == 11.75
    n = torch.arange(10000).double()
    assert torch.allclose((n * g[0] ** n).sum() / (g[0] ** n).sum(), d, rtol=1e-3)  # it does look back d tokens
    assert all(torch.equal(s.gate.bias, students[0].gate.bias) for s in students)  # every layer the same here

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
    teacher_out = block(x)
    # the distillation loss starts at rounding level: MSE vs the square of the block's update
    assert dtr.distill_loss(block, student, x, teacher_out) < 1e-10 * (teacher_out - x).pow(2).mean()
    with dtr.hybrid([block], [0], [student]):
        assert rel_err(block(x) - x, teacher_out - x) < 1e-5
    assert block.attn is attn  # the teacher's attention is back

@pytest.mark.parametrize("kind", ["gla", "hedgehog", "gdn"])  # jet's output is RMS-normalised instead
def test_student_returns_a_shared_value_unchanged(kind):
    # softmax attention's output is a convex combination of values, so a value every token shares
    # comes out unchanged; a student's normaliser must keep that (gdn's: the read of its ones
    # column, q.z), whatever the gates and write strengths do
    model = tiny_gpt()
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight[32:] = 0  # W_v = 0: every value is the bias
        attn.c_attn.bias[32:] = torch.randn(16)
    student = dtr.make_students(model, kind)[0]
    for gate in (getattr(student, "beta", None), student.gate):
        if gate is not None:
            torch.nn.init.normal_(gate.weight, std=1.0)
    x = torch.randn(2, 32, 16)
    assert rel_err(student(x), attn(x)) < 1e-5

@pytest.mark.parametrize("kind,linear", [("gla", []), ("gla", [0, 2]), ("gla", [0, 1, 2]),  # teacher, hybrid, all-linear
                                         ("gdn", [0, 2]), ("gdn", [0, 1, 2])])
def test_cached_generation_equals_plain_forward(kind, linear):
    # prefill 70 tokens (past the 64-token chunk boundary), 5 more at once, then one token at a time:
    # every position's logits must equal those of one uncached forward over the whole sequence
    torch.manual_seed(0)
    model = train_teacher.GPT(train_teacher.GPTConfig(block_size=100, vocab_size=20, n_layer=3, n_head=2, n_embd=16)).eval()
    students = dtr.make_students(model, kind)
    for s in students:  # a gate that really decays (and for gdn a beta that varies), so the state hand-off is exercised
        for gate in (s.gate, getattr(s, "beta", s.gate)):
            torch.nn.init.normal_(gate.weight, std=1.0)
    dtr.swap_in(model.transformer.h, linear, students)
    idx = torch.randint(20, (2, 100))
    full, _ = model(idx)
    cache = Cache(model, 2, 100)
    steps = [model(idx[:, :70], cache=cache)[0], model(idx[:, 70:75], cache=cache)[0]]  # prompt, then a few more at once
    steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(75, 100)]
    assert rel_err(torch.cat(steps, dim=1), full) < 1e-5
    assert cache.pos == 100

def tiny_llama(seed=0):
    """A random Llama-shaped teacher: rotary positions, 4 query / 2 key-value heads, RMSNorm, SwiGLU."""
    torch.manual_seed(seed)
    return train_teacher.GPT(train_teacher.GPTConfig(block_size=100, vocab_size=20, n_layer=3, n_head=4, n_kv_head=2,
                                                     n_embd=32, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)).eval()

def away_from_start(students, seed=1):
    """Every student parameter moved off its start (identity kernels, open gates, zero generators):
    decoding caches that only work at the start (a convolution's past, a window's keys) would pass."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in students:
            for p in s.parameters():
                p.add_(0.3 * (p.abs().mean() + 0.1) * torch.randn(p.shape, generator=g))
    return students

LEVER_SETS = [dict(), dict(short_conv=4, out_norm=True, window=8), dict(short_conv=3, rotary="none", window=1)]

@pytest.mark.parametrize("kind,levers", [(k, l) for k in dtr.STUDENTS for l in LEVER_SETS] +
                         [(k, dict(rotary="after", short_conv=4, window=8)) for k in ("gla", "hedgehog")])
def test_every_student_decodes_as_it_trains(kind, levers):
    # all layers linear, parameters away from their start: a prefill past the 64-token chunk, 5 tokens
    # at once, then one at a time give one full forward's logits (fp32 sums in another order: 1e-4)
    model = tiny_llama()
    dtr.swap_in(model.transformer.h, [0, 1, 2], away_from_start(dtr.make_students(model, kind, **levers)))
    idx = torch.randint(20, (2, 100), generator=torch.Generator().manual_seed(2))
    full, _ = model(idx)
    cache = Cache(model, 2, 100)
    steps = [model(idx[:, :70], cache=cache)[0], model(idx[:, 70:75], cache=cache)[0]]
    steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(75, 100)]
    assert rel_err(torch.cat(steps, dim=1), full) < 1e-4
    sizes = {k: t.shape for k, t in cache.layers[0].items() if torch.is_tensor(t)}  # nothing grows with the context
    assert all(100 not in shape and 99 not in shape for shape in sizes.values()), sizes

@pytest.mark.parametrize("kind", dtr.STUDENTS)
def test_a_short_convolution_starts_as_the_identity(kind):
    model = tiny_llama()
    plain, conv = dtr.make_students(model, kind)[1], dtr.make_students(model, kind, short_conv=4)[1]
    x = torch.randn(2, 40, 32)
    assert torch.equal(plain(x), conv(x))

def test_rotations_after_the_feature_map_are_roformers_linear_form():
    # y_t = sum_s (R_t phi(q_t)).(R_s phi(k_s)) v_s / sum_s phi(q_t).phi(k_s), written out as a T x T sum
    model = tiny_llama()
    s = away_from_start(dtr.make_students(model, "hedgehog", rotary="after"))[0]
    x = torch.randn(2, 40, 32, dtype=torch.float64)
    s = s.double()
    B, T, C = x.shape
    q, k, v = (t.view(B, T, 4, 8).transpose(1, 2) for t in s.c_attn(x).split(C, dim=2))
    fq, fk = hedgehog_feature_map(q, s.fmap_q), hedgehog_feature_map(k, s.fmap_k)
    rq, rk = train_teacher.rope(fq, 0, s.rope[0]), train_teacher.rope(fk, 0, s.rope[0])
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    num = (rq @ rk.mT).masked_fill(~causal, 0) @ v
    den = (fq @ fk.mT).masked_fill(~causal, 0).sum(-1, keepdim=True)
    want = s.c_proj((num / den).transpose(1, 2).reshape(B, T, C))
    assert rel_err(s(x), want) < 1e-4  # rope turns in fp32 even for fp64 inputs
    for kind in ("gdn", "jet"):  # the delta rule's cores have no such form: refused, not read as "none"
        with pytest.raises(ValueError, match=f"rotary='after' .RoFormer's linear form. is for hedgehog and gla, not {kind}"):
            dtr.make_students(model, kind, rotary="after")

def test_the_window_branch_is_softmax_over_the_last_w_tokens():
    # linear branch switched off: exactly the teacher's attention restricted to the last W keys
    model = tiny_llama()
    s = dtr.make_students(model, "gla", window=5)[0]
    s.window_only = True
    teacher = model.transformer.h[0].attn
    x = torch.randn(2, 30, 32)
    q, k, v = teacher.qkv(x)
    k, v = (t.repeat_interleave(2, dim=1) for t in (k, v))
    i, j = torch.arange(30)[:, None], torch.arange(30)[None]
    scores = (q @ k.mT / 8 ** 0.5).masked_fill(~((j <= i) & (j > i - 5)), float("-inf"))
    want = teacher.c_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 30, 32))
    assert rel_err(s(x), want) < 1e-5

def test_window_share_and_output_scale_start_from_the_teacher():
    # W_q = 0: uniform attention, so a query at i puts W / (i + 1) of its weight inside a W-token window
    model = tiny_llama()
    for block in model.transformer.h:
        block.attn.c_attn.weight.data[:32] = 0
    students = dtr.make_students(model, "jet", window=4)
    x = torch.randint(20, (3, 32), generator=torch.Generator().manual_seed(0))
    dtr.start_students(model, students, x)
    share = torch.sigmoid(students[0].window_gate.bias)
    assert torch.allclose(share, (4 / torch.arange(17, 33).float()).mean().expand(4), rtol=1e-4)
    h = model.transformer.h[0].ln_1(model.embed(x))
    y = model.transformer.h[0].attn.attention_weights(h) @ model.transformer.h[0].attn.qkv(h)[2].repeat_interleave(2, dim=1)
    assert torch.allclose(students[0].out_norm[:, 0, 0], y.pow(2).mean(dim=(0, 2, 3)).sqrt(), rtol=1e-5)

def reference_generate(model, idx, n, generator):
    """generate() without a cache: each token from a full forward over the context generate() uses:
    the prompt, growing; once it reaches the window, its last half, growing again."""
    window, start = model.config.block_size, max(0, idx.size(1) - model.config.block_size)
    for _ in range(n):
        logits = model(idx[:, start:])[0][:, -1].float() / 0.8
        v, _ = torch.topk(logits, min(40, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
        idx = torch.cat((idx, torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)), dim=1)
        if idx.size(1) - start >= window:  # the window is full: the next token starts from its last half
            start = idx.size(1) - window // 2
    return idx

@pytest.mark.parametrize("kind,linear", [("gla", []), ("gla", [0, 1, 2]), ("gdn", [0, 1, 2])])
def test_generate_equals_uncached_sampling(kind, linear):
    # 50 tokens through a 16-token window: several refreshes, each token sampled from the same logits
    torch.manual_seed(0)
    model = train_teacher.GPT(train_teacher.GPTConfig(block_size=16, vocab_size=20, n_layer=3, n_head=2, n_embd=16)).eval()
    dtr.swap_in(model.transformer.h, linear, dtr.make_students(model, kind))
    start = torch.zeros(1, 1, dtype=torch.long)
    got = model.generate(start, 50, generator=torch.Generator().manual_seed(3))
    want = reference_generate(model, start, 50, torch.Generator().manual_seed(3))
    assert torch.equal(got, want)

# ---- the students of a Llama-shaped teacher: grouped-query attention and rotary positions ----

def llama_gpt(block_size=100, seed=0):
    """A random Llama-shaped GPT: 4 query heads reading 2 key/value heads, rope, RMSNorm, SwiGLU, q/k/v biases."""
    torch.manual_seed(seed)
    return train_teacher.GPT(train_teacher.GPTConfig(block_size=block_size, vocab_size=20, n_layer=3, n_head=4, n_embd=32, n_kv_head=2,
                                                     pos="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=48, bias=False, qkv_bias=True)).eval()

@pytest.mark.parametrize("kind", dtr.STUDENTS)
def test_student_heads_start_as_the_teachers_heads(kind):
    # query head h reads key/value head h // 2 (transformers' repeat_kv): the student's own k and v of
    # head h must be that block of rows. A row-wise repeat (each row twice) would give head 0 the
    # first 4 rows of kv head 0 twice each: the check below then fails by ~1 relative.
    model = llama_gpt()
    attn, student = model.transformer.h[0].attn, dtr.make_students(model, kind)[0]
    hs, C = 8, 32
    w, b = attn.c_attn.weight, attn.c_attn.bias
    for h in range(4):
        for part, (rows, start) in enumerate([(range(h * hs, (h + 1) * hs), 0),  # q: its own rows
                                              (range((h // 2) * hs, (h // 2 + 1) * hs), C),  # k: kv head h // 2
                                              (range((h // 2) * hs, (h // 2 + 1) * hs), C + 16)]):  # v: the same kv head
            mine = slice(part * C + h * hs, part * C + (h + 1) * hs)
            assert torch.equal(student.c_attn.weight[mine], w[[start + r for r in rows]])
            assert torch.equal(student.c_attn.bias[mine], b[[start + r for r in rows]])
    # so softmax attention over the student's q, k, v (one key/value head per query head) is the teacher's attention
    plain = train_teacher.CausalSelfAttention(dataclasses.replace(model.config, n_kv_head=0))
    plain.c_attn, plain.c_proj = student.c_attn, student.c_proj
    x = torch.randn(2, 32, C)
    assert rel_err(plain(x), attn(x)) < 1e-6

@pytest.mark.parametrize("kind", ["gla", "gdn"])
def test_rope_students_decode_as_they_train(kind):
    # a rotary teacher's students rotate q and k at each token's position: prefill past a chunk
    # boundary, a few tokens at once, then one at a time must give the uncached forward's logits, and
    # sampling with the cache the uncached sampler's tokens (through several window refreshes)
    model = llama_gpt()
    students = dtr.make_students(model, kind)
    for s in students:
        for gate in (s.gate, getattr(s, "beta", s.gate)):
            torch.nn.init.normal_(gate.weight, std=1.0)
    dtr.swap_in(model.transformer.h, [0, 2], students)
    idx = torch.randint(20, (2, 100))
    cache = Cache(model, 2, 100)
    steps = [model(idx[:, :70], cache=cache)[0], model(idx[:, 70:75], cache=cache)[0]]
    steps += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(75, 100)]
    assert rel_err(torch.cat(steps, dim=1), model(idx)[0]) < 1e-5
    small = llama_gpt(block_size=16)
    dtr.swap_in(small.transformer.h, [0, 1, 2], dtr.make_students(small, kind))
    start = torch.zeros(1, 1, dtype=torch.long)
    got = small.generate(start, 50, generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, reference_generate(small, start, 50, torch.Generator().manual_seed(3)))

# ---- greedy replacement on a constructed case ----

def test_greedy_follows_algorithm_1():
    # "students" are the teacher's own attention with c_proj scaled by 1 + eps: eps = 0 is a free swap
    model, data = periodic_gpt(n_layer=4)
    students = [copy.deepcopy(block.attn) for block in model.transformer.h]
    for s, e in zip(students, [0.5, 0.0, 2.0, 1.0]):
        s.c_proj.weight.mul_(1 + e)
    batches = train_teacher.fixed_batches(data, 32, 8, 3, "cpu")
    teacher_attn = [b.attn for b in model.transformer.h]
    teacher_loss, traj = dtr.greedy_replace(model, students, batches)
    assert [b.attn for b in model.transformer.h] == teacher_attn  # greedy hands the teacher back
    assert traj[0]["layer"] == 1 and traj[0]["val_loss"] == pytest.approx(teacher_loss, rel=1e-6)
    # every round's choice is the argmin of a plain, uncached forward over the candidates
    linear = []
    for t in traj:
        losses = {}
        for i in sorted(set(range(4)) - set(linear)):
            with dtr.hybrid(model.transformer.h, linear + [i], students):
                losses[i] = val_loss(model, batches)
        assert t["layer"] == min(losses, key=losses.get)
        assert t["val_loss"] == pytest.approx(losses[t["layer"]], rel=1e-5)
        assert t["rel_change"] == pytest.approx(t["val_loss"] / teacher_loss - 1)
        linear.append(t["layer"])
    assert max(t["val_loss"] for t in traj) > 1.5 * teacher_loss  # the damage is real, the order matters

def test_greedy_round_scores_each_candidate_as_a_plain_forward_bitwise():
    # greedy_round runs the current hybrid once per batch and each candidate from its own layer on,
    # one batch's layer inputs at a time: the same arithmetic as a plain forward of each candidate
    # hybrid, so the same bits, on token batches (loss, accuracy) and multiple-choice ones
    model, data = periodic_gpt(n_layer=4)
    students = dtr.make_students(model, "gla")
    tokens = train_teacher.fixed_batches(data, 32, 8, 3, "cpu")
    items = [{"context": data[i:i + 20].tolist(), "choices": [data[i + 20:i + 24].tolist(), data[i + 3:i + 7].tolist()],
              "gold": 0, "chars": [4, 4]} for i in range(0, 70, 7)]
    choices = tasks.choice_batches(items, 32, 6, "cpu")  # 20 rows: batches of 6, 6, 6 and 2
    for batches, metric in ((tokens, "loss"), (tokens, "accuracy"), (choices, "accuracy"), (choices, "acc_norm")):
        for linear in ([], [2], [3, 0]):
            with dtr.hybrid(model.transformer.h, linear, students):
                got = dtr.greedy_round(model, students, batches, linear, metric=metric)
            want = {}
            for i in sorted(set(range(4)) - set(linear)):
                with dtr.hybrid(model.transformer.h, linear + [i], students):
                    want[i] = tasks.evaluate(model, batches)[metric]
            assert got == want and list(got) == list(want), (metric, linear)

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
    # a budget instead (--keep_full K): the search's hybrid with K full layers, within tolerance or not
    for K, linear in ((0, [0, 1, 2, 3]), (1, [0, 1, 2]), (3, [2]), (4, [])):
        assert dtr.select_models(0.5, traj, tolerance=0.0, keep_full=K)[1]["linear_layers"] == linear
    # accuracy: higher is better, and the tolerance is read the other way round
    acc = [{"k": 1, "layer": 2, "val_accuracy": 0.9}, {"k": 2, "layer": 0, "val_accuracy": 0.95},
           {"k": 3, "layer": 1, "val_accuracy": 0.7}]
    m_best, m_opt = dtr.select_models(0.92, acc, tolerance=0.05, metric="accuracy")
    assert m_best == {"linear_layers": [0, 2], "val_accuracy": 0.95} and m_opt == m_best
    _, m_opt = dtr.select_models(0.92, acc[:1], tolerance=0.01, metric="accuracy")  # 0.9 < 0.99 x 0.92
    assert m_opt == {"linear_layers": [], "val_accuracy": 0.92}

def test_search_and_test_batches_share_no_window():
    # greedy chooses on the search batches (today's validation batches, unchanged), reports on the test batches
    data = torch.arange(111_540)
    search = torch.cat([x for x, _ in train_teacher.fixed_batches(data, 128, 16, 8, "cpu")])
    test = torch.cat([x for x, _ in train_teacher.fixed_batches(data, 128, 16, 8, "cpu", test=True)])
    starts = torch.linspace(0, len(data) - 129, 128).long()  # the search windows as they always were
    assert torch.equal(search[:, 0], starts) and len(test) == len(search) - 1
    assert not set(search[:, 0].tolist()) & set(test[:, 0].tolist())
    taken = torch.zeros(len(data), dtype=torch.bool)
    taken[search.flatten()] = True
    assert not taken[test.flatten()].any()  # not a single token in common, here where the split has room

# ---- end to end (tiny preset) ----

def test_end_to_end_report(tiny_run):
    args, out, report = tiny_run
    with open(os.path.join(out, "gla", "report.json")) as f:
        saved = json.load(f)
    assert saved == {"format": FORMAT, **json.loads(json.dumps(report))}  # the file carries its format version
    L = saved["n_layer"]
    assert len(saved["distill"]["mse"]) == len(saved["distill"]["rel_mse"]) == L
    assert [t["k"] for t in saved["trajectory"]] == list(range(1, L + 1))
    assert sorted(t["layer"] for t in saved["trajectory"]) == list(range(L))
    teacher = saved["teacher"]["val_loss"]
    assert saved["m_opt"]["val_loss"] <= (1 + saved["tolerance"]) * teacher + 1e-9
    assert saved["m_best"]["val_loss"] <= teacher and "tasks" not in saved
    model, val = check_m_opt_reloads(out, "gla", saved, args, dtr.LinearAttention)
    test = tasks.evaluate(model, train_teacher.fixed_batches(val, 64, 8, 2, "cpu", test=True))
    assert test["loss"] == pytest.approx(saved["m_opt"]["test_loss"], rel=1e-5) == pytest.approx(saved["test"][L]["loss"], rel=1e-5)

def check_m_opt_reloads(out, student, report, args, cls):
    """The saved M_opt reloads with `cls` students where the report says, and scores what it says."""
    model, ckpt = dtr.load_hybrid(os.path.join(out, student, "m_opt.pt"), "cpu")
    linear = [i for i, b in enumerate(model.transformer.h) if isinstance(b.attn, cls)]
    assert linear == ckpt["linear_layers"] == report["m_opt"]["linear_layers"]
    val = prepare.load_data(dtr.parse_args(args))[1]
    assert val_loss(model, train_teacher.fixed_batches(val, 64, 8, 2, "cpu")) == pytest.approx(report["m_opt"]["val_loss"], rel=1e-5)
    return model, val

def test_gdn_run_reloads_with_gdn_students(tiny_run, capsys):
    # --student gdn on the same teacher: its students go in their own folder, and its M_opt
    # reloads with gated-delta-rule students where the report says, scoring what it says
    args, out, _ = tiny_run
    report = dtr.run(dtr.parse_args(args + ["--student", "gdn"]))
    assert "teacher  reusing" in capsys.readouterr().out and report["m_opt"]["linear_layers"] != []
    check_m_opt_reloads(out, "gdn", report, args, dtr.GatedDeltaNet)

def test_rerun_reuses_teacher_and_students(tiny_run, capsys):
    args, out, report = tiny_run
    again = dtr.run(dtr.parse_args(args))
    assert again["timings_s"]["teacher"] == 0 and again["teacher"]["train_s"] == report["teacher"]["train_s"] > 0
    assert "distill  reusing" in capsys.readouterr().out
    assert again["trajectory"] == report["trajectory"]

def test_students_distilled_otherwise_are_refused_not_reused(tiny_run):
    args, out, _ = tiny_run
    for flag, value in (("--gate_init", "fixed"), ("--distill_lr", "0.001")):
        line = refused(args + [flag, value])
        assert os.path.join(out, "gla", "students.pt") in line and f"this run has {flag[2:]}={value}" in line

def test_distillation_lowers_mse(tiny_run):
    args, out, _ = tiny_run
    cfg = dtr.parse_args(args)
    model, _ = dtr.load_hybrid(os.path.join(out, "teacher.pt"), "cpu")
    train, val, _ = prepare.load_data(cfg)
    batches = train_teacher.fixed_batches(val, cfg.block_size, cfg.batch_size, 2, "cpu")
    students = dtr.make_students(model, "gla")
    before, _ = dtr.block_mse(model, students, batches)
    dtr.distill_blocks(model, students, train, cfg)
    after, _ = dtr.block_mse(model, students, batches)
    assert sum(after) < 0.5 * sum(before)
    assert all(p.grad is None for p in model.parameters())  # the teacher never learns

def test_nan_distillation_is_refused():
    model = tiny_gpt()
    model.requires_grad_(False)
    students = dtr.make_students(model, "gla")
    with torch.no_grad():
        students[1].fmap_q.fill_(float("nan"))
    cfg = dtr.Config(block_size=32, distill_iters=3, distill_batch_size=2)
    with pytest.raises(DtrError, match="diverged"):
        dtr.distill_blocks(model, students, torch.randint(20, (500,)), cfg)

# ---- the command line: one error line, exit code 2, nothing finished lost ----


def test_every_numeric_setting_has_a_valid_range():
    for f in dataclasses.fields(dtr.Config):
        if isinstance(f.default, (int, float)) and not isinstance(f.default, bool):
            assert f.metadata["valid"], f"--{f.name} has no valid range, so a bad value would slip through"

@pytest.mark.parametrize("flags,says", [
    (["--n_head", "5"], "--n_head 5 does not divide --n_embd 48"),
    (["--eval_interval", "0"], "--eval_interval 0 is not > 0"),
    (["--save_interval", "0"], "--save_interval 0 is not > 0"),
    (["--max_iters", "0"], "--max_iters 0 is not > 0"),
    (["--lr", "nan"], "--lr nan is not a finite number"),
    (["--tolerance", "1.5"], "--tolerance 1.5 is not in [0, 1)"),
    (["--keep_full", "5"], "--keep_full 5 is more than the 4 layers; keep at most 4 full"),
    (["--keep_full", "-2"], "--keep_full -2 is not >= -1"),
    (["--dropout", "1"], "--dropout 1.0 is not in [0, 1)"),
    (["--task", "lm,recall"], "comma-separated list of lm, copy"),
    (["--student", "mamba"], "unknown --student 'mamba'; use one of gla, hedgehog, gdn"),
    (["--preset", "huge"], "unknown --preset 'huge'"),
])
def test_bad_settings_are_refused_before_any_work(flags, says, tmp_path):
    with pytest.raises(DtrError) as e:
        dtr.parse_args(["--preset", "tiny", "--out_dir", str(tmp_path)] + flags)
    assert says in str(e.value) and not os.listdir(tmp_path)

def test_bad_inputs_through_the_command_line(tiny_run, data_dir, tmp_path, capsys):
    args, out, _ = tiny_run
    base = ["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(tmp_path / "o")]
    # a setting that fails in the teacher phase: the error class is the one dtr.py catches (two as scripts,
    # the rest through main in this process: the same command line, no second start-up)
    assert "--batch_size 8 does not split into --grad_accum 3" in refused(base + ["--grad_accum", "3"])
    assert "--n_head 5 does not divide" in refused(base + ["--n_head", "5"], "train_teacher.py")
    assert "neither a built-in dataset" in refused_here(dtr.main, base + ["--dataset", "nope"], capsys)
    assert "--dataset shakespeare_char is tokenized by char; leave --tokenizer out, or use --dataset shakespeare" in \
        refused_here(dtr.main, base + ["--tokenizer", "gpt2"], capsys)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \xff")
    assert "as UTF-8 text" in refused_here(dtr.main, base + ["--dataset", str(tmp_path / "bin.txt")], capsys)
    (tmp_path / "short.txt").write_text("too short for a context of 64 characters")
    assert "fewer than the context" in refused_here(dtr.main, base + ["--dataset", str(tmp_path / "short.txt")], capsys)
    (tmp_path / "odd.txt").write_text("caf\u00e9 " * 20)
    line = refused_here(dtr.main, base + ["--task_text", str(tmp_path / "odd.txt")], capsys)
    assert "'\u00e9', which is not in the teacher's char vocabulary" in line
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in refused_here(dtr.main, base + ["--device", "cuda"], capsys)
    # a lever that would do nothing (and name a folder of its own) is refused, as is one a student cannot take
    assert "--rotary before places a rotary teacher's rotations, and this teacher has learned positions instead; leave " \
           "--rotary out" in refused_here(dtr.main, base + ["--rotary", "before"], capsys)
    assert "jet always has its output norm and gate" in refused_here(dtr.main, base + ["--student", "jet", "--out_norm"], capsys)
    assert "is for the hedgehog and gla students" in refused_here(dtr.main, base + ["--arch", "llama", "--student", "gdn",
                                                                                    "--rotary", "after"], capsys)
    # --sample of something that is not a checkpoint: the message says what to pass, not "delete it"
    for path in (tmp_path / "missing.pt", os.path.join(HERE, "README.md")):
        line = refused_here(dtr.main, base + ["--sample", str(path)], capsys)
        assert str(path) in line and "delete" not in line and "m_opt.pt" in line
    assert not (tmp_path / "o").exists() or not any(f.endswith(".tmp") for f in fingerprint(tmp_path / "o"))

def test_own_text_without_a_newline_samples(tmp_path):
    # no "\n" in the vocabulary: sampling starts from another token, during the run and with --sample
    g = torch.Generator().manual_seed(0)
    words = ["".join(chr(97 + i) for i in torch.randint(26, (5,), generator=g)) for _ in range(1800)]
    (tmp_path / "words.txt").write_text(" ".join(words))
    args = ["--dataset", str(tmp_path / "words.txt"), "--preset", "tiny", "--max_iters", "20", "--distill_iters", "5",
            "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o")]
    assert "sample from M_opt" in launch([sys.executable, "dtr.py"] + args)
    sampled = launch([sys.executable, "dtr.py", "--sample", str(tmp_path / "o" / "gla" / "m_opt.pt")]).splitlines()[-1]
    assert sampled and set(sampled) <= set("abcdefghijklmnopqrstuvwxyz ")  # the text's own characters

def test_runs_on_other_data_or_tokenizer_get_their_own_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    folders = {dtr.parse_args(["--dataset", str(tmp_path / "mine.txt"), "--tokenizer", t]).out_dir for t in ("char", "gpt2")}
    assert folders == {os.path.join("out", "mine-char-cpu"), os.path.join("out", "mine-gpt2-cpu")}

@pytest.mark.parametrize("broken,content,finished,says", [  # finished: the phases done before the broken file's
    ("teacher.pt", b"not a checkpoint", ["gla/students.pt"], "delete it to retrain the teacher"),
    ("teacher.partial.pt", b"", [], "delete it to redo that phase"),
    ("gla/students.pt", b"", ["teacher.pt"], "delete it to distill again"),
    ("gla/students.partial.pt", b"", ["teacher.pt"], "delete it to redo that phase"),
    ("gla/greedy.partial.json", b'{"key": ', ["teacher.pt", "gla/students.pt"], "delete it to redo that phase"),
])
def test_a_broken_file_is_named_and_nothing_finished_is_lost(tiny_run, tmp_path, broken, content, finished, says):
    args, out, _ = tiny_run
    folder = tmp_path / "o"
    os.makedirs(folder / "gla")
    for f in finished:
        shutil.copy(os.path.join(out, f), folder / f)
    (folder / broken).write_bytes(content)
    before = fingerprint(folder)
    line = refused(with_out_dir(args, folder))
    assert str(folder / broken) in line and says in line
    assert fingerprint(folder) == before  # the broken file is left for the user, the rest untouched
    if broken != "teacher.partial.pt":  # the fix the message names works, reusing what was finished
        os.remove(folder / broken)
        log = launch([sys.executable, "dtr.py"] + with_out_dir(args, folder))
        # a retrained teacher has the same weights, so its students are still its students
        assert ("distill  reusing" if broken == "teacher.pt" else "teacher  reusing") in log

# ---- torchrun, and runs that survive being killed ----

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
    assert (two["trajectory"], two["m_best"], two["m_opt"]) == (one["trajectory"], one["m_best"], one["m_opt"])
    assert rel_err(weights(tmp_path / "two" / "gla" / "students.pt", "students"),
                   weights(os.path.join(out, "gla", "students.pt"), "students")) < 1e-6

# runs dtr.main, and stops the process at the n-th save of `target`: SIGINT just before it (as a
# Ctrl-C would), or SIGKILL halfway through writing its temp file (as a power cut would)
STOP_AT_SAVE = """
import os, signal, sys
import dtr, plumbing
target, n, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal, even when started in the background
save, seen = plumbing.atomic_save, []
def save_and_stop(obj, path):
    seen.extend([path] if path.endswith(target) else [])
    if len(seen) == n and path.endswith(target):
        if sig == signal.SIGKILL:
            with open(f"{path}.{os.getpid()}.tmp", "wb") as f:
                f.write(b"the first half of a checkpoint")
        os.kill(os.getpid(), sig)
    save(obj, path)
plumbing.atomic_save = dtr.atomic_save = save_and_stop
dtr.main(sys.argv[4:])
"""

def test_killed_runs_resume_to_the_same_result(tiny_run, tmp_path):
    args, out, report = tiny_run
    args = with_out_dir(args, tmp_path / "o")
    run_dir = tmp_path / "o" / "gla"
    def stop_at(target, n, sig):
        code = 130 if sig == "SIGINT" else -signal.SIGKILL
        return launch([sys.executable, "-c", STOP_AT_SAVE, target, str(n), sig] + args, code)
    # Ctrl-C in the teacher's 3rd checkpoint (step 30 of 200; tiny saves every 10 steps)
    log = stop_at("teacher.partial.pt", 3, "SIGINT")
    assert "interrupted; rerun the same command to resume from" in log and "teacher.partial.pt" in log
    # a rerun with other settings is refused, naming the setting, through the real command line
    assert "n_embd=48 but this run has n_embd=64" in refused(args + ["--n_embd", "64", "--n_head", "2"])
    assert "written with lr=0.002 but this run has lr=0.001" in refused(args + ["--lr", "0.001"])
    # the rerun finishes the teacher and is killed writing the 2nd distillation checkpoint (step 20 of 50)
    log = stop_at("students.partial.pt", 2, "SIGKILL")
    assert "teacher  resuming" in log and "at step 20/200" in log
    assert glob.glob(str(run_dir / "students.partial.pt.*.tmp"))  # the half-written temp file the kill left
    assert "distill_iters=50 but this run has distill_iters=60" in refused(args + ["--distill_iters", "60"])
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
    assert resumed["teacher"]["train_s"] > 0 and resumed["distill"]["train_s"] > 0  # the time before each kill counts
    assert rel_err(weights(tmp_path / "o" / "teacher.pt"), weights(os.path.join(out, "teacher.pt"))) < 1e-6
    assert rel_err(weights(run_dir / "students.pt", "students"),
                   weights(os.path.join(out, "gla", "students.pt"), "students")) < 1e-6
    assert [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".tmp") or ".partial." in f] == []

# ---- the layout: imports form a tree, every name defined before it is used ----

CORE = ["plumbing.py", "kernel.py", "pretrained.py", "prepare.py", "train_teacher.py", "tasks.py", "students.py", "dtr.py"]  # in import order
PROJECT = CORE + sorted(
    os.path.join("experiments", f) for f in os.listdir(os.path.join(HERE, "experiments")) if f.endswith(".py"))

def project_imports(path):
    """The project's own modules that a file imports (by module name)."""
    tree = ast.parse(open(os.path.join(HERE, path)).read())
    names = {os.path.splitext(os.path.basename(p))[0] for p in PROJECT} | {"conftest"}
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return found & names

def used_before_defined(path):
    """(line, name) for each module-level name read above the line that defines it. A name bound
    locally (an argument, an assignment in the function) is the function's own; a class body may
    name the class itself."""
    tree = ast.parse(open(os.path.join(HERE, path)).read())
    defined = {}
    for node in tree.body:
        targets = [node] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t for t in ast.walk(node) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)] if isinstance(node, (ast.Assign, ast.AnnAssign)) else \
            [a for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
        for t in targets:
            name = getattr(t, "name", None) or getattr(t, "id", None)
            name = (getattr(t, "asname", None) or name).split(".")[0]
            defined.setdefault(name, (node.lineno, node.end_lineno))
    bad = []

    def visit(node, local):
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            args = node.args
            local = local | {a.arg for a in args.args + args.kwonlyargs + args.posonlyargs} | \
                {a.arg for a in (args.vararg, args.kwarg) if a} | \
                {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in defined and node.id not in local:
            start, end = defined[node.id]
            if node.lineno < start:
                bad.append((node.lineno, node.id))
        for child in ast.iter_child_nodes(node):
            visit(child, local)
    visit(tree, frozenset())
    return bad

def test_imports_form_a_tree_and_names_are_defined_before_use():
    graph = {os.path.splitext(os.path.basename(p))[0]: project_imports(p) for p in PROJECT}
    assert graph["plumbing"] == set() and graph["kernel"] == set()  # the two leaves import nothing of ours
    assert graph["train_teacher"] == {"plumbing", "pretrained", "prepare"}
    assert graph["students"] == {"kernel", "train_teacher"}
    assert graph["dtr"] == {"plumbing", "prepare", "tasks", "students", "train_teacher"}
    order = [os.path.splitext(p)[0] for p in CORE]  # each imports only those before it; experiments only core modules
    for name, deps in graph.items():
        assert all(d in order[:order.index(name)] if name in order else d != name for d in deps), (name, deps)
    for path in PROJECT:
        assert used_before_defined(path) == [], path
    tests = [f for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py")] + ["experiments/test_experiments.py"]
    for path in tests:  # helpers come from conftest.py, never from another test file
        tree = ast.parse(open(os.path.join(HERE, path)).read())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
                   {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m.startswith("test_")}, path

def test_students_with_other_levers_get_their_own_folder():
    # a lever pulled away from dtr.py's default names the run folder, so --window 4 never meets plain gla's students.pt
    name = lambda **kw: dtr.run_name(vars(dtr.Config(**kw)))
    assert name() == "gla" and name(student="jet") == "jet" and dtr.run_name({"student": "gdn"}) == "gdn"
    assert name(window=4, out_norm=True) == "gla-out_norm-window4" and name(window=0, rotary="none") == "gla-rotarynone-window0"
