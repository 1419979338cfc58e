"""
Typical mistakes: each function is right in shape and wrong in value, the way a first attempt
often is (its docstring says how). test_checks.py runs the checks of test_exercises.py on this
file and asserts that each fails with the message in EXPECTED, the one that names the mistake.
To see them as a student would:

    DTR_SOLUTION=exercises/mistakes.py python -m pytest -q test_exercises.py

Exercises 2 and 5 have more mistakes here, which cannot share the names chunked_linear_attention
and distill_loss: chunked_calls_the_loop, chunked_calls_the_quadratic_form, distill_loss_under_no_grad
and distill_loss_summed; test_checks.py tries each in its place (EXPECTED_CHUNKED, EXPECTED_DISTILL_LOSS).
"""
import torch
import torch.nn.functional as F

import dtr
import kernel

# ---- exercises 1-3: the recurrence, its chunked form, its one-token step ----

def naive_linear_attention(q, k, v, log_g=None, initial_state=None):
    """Reads the state before this step's update: o_t = q_t^T S_(t-1)."""
    B, H, T, D = q.shape
    S = q.new_zeros(B, H, D, v.shape[-1]) if initial_state is None else initial_state
    outs = []
    for t in range(T):
        outs.append((q[:, :, t, None] @ S)[:, :, 0])
        g = 1.0 if log_g is None else torch.exp(log_g[:, :, t, None, None])
        S = g * S + k[:, :, t, :, None] * v[:, :, t, None, :]
    return torch.stack(outs, 2), S

def chunked_linear_attention(q, k, v, log_g=None, initial_state=None, chunk_size=64):
    """Forgets to hand the state from chunk to chunk: every chunk starts from initial_state."""
    outs, S = [], None
    for c in range(0, q.shape[2], chunk_size):
        part = slice(c, c + chunk_size)
        o, S = kernel.naive_linear_attention(q[:, :, part], k[:, :, part], v[:, :, part],
                                             None if log_g is None else log_g[:, :, part], initial_state)
        outs.append(o)
    return torch.cat(outs, 2), S

def chunked_calls_the_loop(q, k, v, log_g=None, initial_state=None, chunk_size=64):
    """Right values, no chunks: the recurrence one step at a time, as exercise 1's loop."""
    outs, S = [], initial_state
    for t in range(q.shape[2]):
        o, S = kernel.linear_attention_step(q[:, :, t], k[:, :, t], v[:, :, t], None if log_g is None else log_g[:, :, t],
                                            S, normalize=False)
        outs.append(o)
    return torch.stack(outs, 2), S

def chunked_calls_the_quadratic_form(q, k, v, log_g=None, initial_state=None, chunk_size=64):
    """Right values, no chunks: the T x T form (kernel.py's naive reference)."""
    return kernel.naive_linear_attention(q, k, v, log_g, initial_state)

def linear_attention_step(q, k, v, log_g=None, state=None, normalize=True):
    """Decays k v^T too, in place, and never normalises."""
    if state is None:
        state = q.new_zeros(*q.shape, v.shape[-1] + normalize)
    if normalize:
        v = torch.cat([v, torch.ones_like(v[..., :1])], -1)
    state += k[..., :, None] * v[..., None, :]
    if log_g is not None:
        state *= torch.exp(log_g)[..., None, None]
    o = (q[..., None, :] @ state)[..., 0, :]
    return (o[..., :-1] if normalize else o), state

# ---- exercise 4: the Hedgehog feature map and the student ----

def hedgehog_feature_map(x, w):
    """Forgets the minus sign."""
    x = x @ w
    return torch.cat([x, x], -1).softmax(-1)

class LinearAttention(dtr.LinearAttention):
    """Shares the teacher's layers instead of copying them, and drops the normaliser."""
    def __init__(self, teacher_attn, gated):
        super().__init__(teacher_attn, gated)
        self.c_attn, self.c_proj = teacher_attn.c_attn, teacher_attn.c_proj

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, 2)
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        q, k = hedgehog_feature_map(q, self.fmap_q), hedgehog_feature_map(k, self.fmap_k)
        y = kernel.linear_attention(q, k, v, normalize=False)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

# ---- exercise 5: the distillation loss, three ways to get it wrong ----

def distill_loss(block, student, x, target):
    """Runs the teacher block as it is: the student never enters."""
    return ((block(x) - target) ** 2).mean()

def distill_loss_under_no_grad(block, student, x, target):
    """Computes the loss under torch.no_grad(): the right value, but nothing for backward() to train."""
    teacher, block.attn = block.attn, student
    try:
        with torch.no_grad():
            return F.mse_loss(block(x).float(), target.float())
    finally:
        block.attn = teacher

def distill_loss_summed(block, student, x, target):
    """Sums the squared error over B, T and C instead of averaging it."""
    teacher, block.attn = block.attn, student
    try:
        return ((block(x).float() - target.float()) ** 2).sum()
    finally:
        block.attn = teacher

# ---- exercise 6 (and 7): scoring a hybrid, right; the search around it, wrong ----

def val(model, batches):
    with torch.no_grad():
        return sum(model(x, y)[1].item() for x, y in batches) / len(batches)

def val_with(model, students, batches, linear):
    """The val loss with the layers in `linear` swapped for their students; hands the model back."""
    blocks = model.transformer.h
    own = [b.attn for b in blocks]
    for i in linear:
        blocks[i].attn = students[i]
    loss = val(model, batches)
    for b, a in zip(blocks, own):
        b.attn = a
    return loss

def greedy_round(model, students, batches, linear):
    """Scores the current hybrid for every candidate, without swapping the candidate in."""
    loss = val_with(model, students, batches, linear)
    return {i: loss for i in range(len(model.transformer.h)) if i not in linear}

def greedy_replace(model, students, batches):
    """Swaps the layer whose swap hurts most."""
    teacher_loss, linear, traj = val(model, batches), [], []
    for k in range(1, len(students) + 1):
        losses = {i: val_with(model, students, batches, linear + [i]) for i in range(len(students)) if i not in linear}
        worst = max(losses, key=losses.get)
        linear.append(worst)
        traj.append({"k": k, "layer": worst, "val_loss": losses[worst], "rel_change": losses[worst] / teacher_loss - 1,
                     "candidates": [losses.get(i) for i in range(len(students))]})
    return teacher_loss, traj

def select_models(teacher_loss, trajectory, tolerance):
    """M_best leaves out the teacher; M_opt stops at the first round over the tolerance."""
    order = [t["layer"] for t in trajectory]
    best = min(trajectory, key=lambda t: t["val_loss"])
    k_opt = 0
    for t in trajectory:
        if t["val_loss"] > (1 + tolerance) * teacher_loss:
            break
        k_opt = t["k"]
    losses = [teacher_loss] + [t["val_loss"] for t in trajectory]
    return ({"linear_layers": sorted(order[:best["k"]]), "val_loss": best["val_loss"]},
            {"linear_layers": sorted(order[:k_opt]), "val_loss": losses[k_opt]})

# ---- exercise 7 ----

def reverse_greedy(model, students, batches):
    """Restores the layers in index order, and reports the loss from before each restore."""
    L = len(students)
    return [{"k": L - 1 - r, "layer": r, "val_loss": val_with(model, students, batches, list(range(r, L)))}
            for r in range(L)]

# ---- what the checks must say about each ----

# test (or its parametrised prefix) -> a fragment of the message it must fail with on this file
EXPECTED = {
    "test_ex1_naive_without_decay": "token t attends to itself",
    "test_ex1_naive_with_decay": "token t attends to itself",
    "test_ex1_naive_from_an_initial_state": "token t attends to itself",
    "test_ex1_naive_gradients": "token t attends to itself",
    "test_ex2_chunked_equals_the_recurrence[T17-C16-decay-state]": "first step of chunk 1",
    "test_ex2_chunked_equals_the_recurrence[T130-C32-decay-state]": "first step of chunk 1",
    "test_ex2_chunked_strong_decay_stays_finite": "first step of chunk 1",
    "test_ex3_step_decodes_like_the_recurrence[decay-state]": "decays the new k_t v_t^T too",
    "test_ex3_step_normalised": "its last column is z_t",
    "test_ex3_step_leaves_the_callers_state_alone": "changed the state it was given",
    "test_ex4_hedgehog_feature_map": "the second half must be -x @ w",
    "test_ex4_student_starts_as_a_copy_of_the_teacher": "deep-copy",
    "test_ex4_hedgehog_student_equals_softmax_when_wq_is_zero": "normalised",
    "test_ex4_student_forward": "differs from the reference",
    "test_ex5_distill_loss_value": "ran its own (teacher) attention",
    "test_ex5_only_the_student_learns": "the teacher's attention got a gradient",
    "test_ex6_greedy_round": "swapped too",
    "test_ex6_greedy_replace": "hurts least",
    "test_ex6_select_models": "is the lowest val loss seen",
    "test_ex7_reverse_greedy_trajectory_is_consistent": "scores",
}

# exercise 2's other mistakes, each in chunked_linear_attention's place: {function: {test: fragment}}
EXPECTED_CHUNKED = {
    "chunked_calls_the_loop": {"test_ex2_chunked_does_chunked_work": "it loops over the time steps"},
    "chunked_calls_the_quadratic_form": {"test_ex2_chunked_does_chunked_work": "it is T x T, the quadratic form"},
}

# exercise 5's other mistakes, each in distill_loss's place: {function: {test: fragment}}
EXPECTED_DISTILL_LOSS = {
    "distill_loss_under_no_grad": {"test_ex5_only_the_student_learns": "computed under torch.no_grad()"},
    "distill_loss_summed": {"test_ex5_distill_loss_value": "summed the squared difference over B, T, C",
                            "test_ex5_only_the_student_learns": "summed the squared difference over B, T, C"},
}
