"""
My solutions to EXERCISES.md. This file starts as a copy of exercises/template.py; check it with

    cp exercises/template.py my_solution.py                             # once, to start
    DTR_SOLUTION=my_solution.py python -m pytest -q test_exercises.py   # all exercises
    DTR_SOLUTION=my_solution.py python -m pytest -q test_exercises.py -k ex1   # one of them

Every function below raises NotImplementedError until you write it; delete a function to skip
its exercise. Layout: q, k (B, H, T, D), v (B, H, T, Dv), log_g (B, H, T), state (B, H, D, Dv).
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- exercise 1: linear attention from the recurrence ----

def naive_linear_attention(q, k, v, log_g=None, initial_state=None):
    """S_t = g_t S_(t-1) + k_t v_t^T, o_t = q_t^T S_t, with g_t = exp(log_g_t) (g_t = 1 if log_g
    is None) and S_(-1) = initial_state (zeros if None). Unnormalised. Returns
    (o (B, H, T, Dv), final state S_(T-1) (B, H, D, Dv)), both fp32."""
    raise NotImplementedError("exercise 1")

# ---- exercise 2: the chunked form ----

def chunked_linear_attention(q, k, v, log_g=None, initial_state=None, chunk_size=64):
    """The same (o, state) as naive_linear_attention, computed chunk_size steps at a time:
    dense work inside a chunk, one state hand-off between chunks. Any T, any chunk_size."""
    raise NotImplementedError("exercise 2")

# ---- exercise 3: the one-token step ----

def linear_attention_step(q, k, v, log_g=None, state=None, normalize=True):
    """One decoding step: q, k (B, H, D), v (B, H, Dv), log_g (B, H) or None, state or None (zeros).
    normalize=False: state (B, H, D, Dv), o = q^T S. normalize=True: state (B, H, D, Dv + 1) whose
    last column is z; o = q^T S[..., :Dv] / (q . z + 1e-6). Returns (o (B, H, Dv), new state);
    the given state is left unchanged."""
    raise NotImplementedError("exercise 3")

# ---- exercise 4: the Hedgehog feature map and the student ----

def hedgehog_feature_map(x, w):
    """x (B, nh, T, hs), w (nh, hs, hs) -> softmax([x @ w, -x @ w], dim=-1), (B, nh, T, 2 hs)."""
    raise NotImplementedError("exercise 4")

class LinearAttention(nn.Module):
    """Drop-in student for the teacher's CausalSelfAttention: forward(x (B, T, C), cache=None) -> (B, T, C).
    Attributes: n_head; c_attn, c_proj (deep copies of the teacher's); fmap_q, fmap_k
    (nn.Parameter (n_head, hs, hs), the identity); gate (None, or if gated nn.Linear(C, n_head)
    with zero weight and bias 4.0, log g_t = logsigmoid(gate(x)) / 16, (B, T, nh) -> (B, nh, T))."""

    def __init__(self, teacher_attn, gated):
        super().__init__()
        raise NotImplementedError("exercise 4")

    def forward(self, x, cache=None):
        raise NotImplementedError("exercise 4")

# ---- exercise 5: the distillation loss of one block (paper 3.1) ----

def distill_loss(block, student, x, target):
    """MSE (fp32, mean over B, T, C) between the teacher `block` run with `student` as its
    attention and `target`, the teacher block's output for x (B, T, C). block.attn is the
    teacher's again afterwards, even if the student raises."""
    raise NotImplementedError("exercise 5")

# ---- exercise 6: greedy replacement (Algorithm 1), M_best and M_opt ----

def greedy_round(model, students, batches, linear):
    """{layer: mean next-token loss over batches of the model with the layers in `linear` and
    this layer swapped for their students}, for every layer not in `linear`. Hands the model back."""
    raise NotImplementedError("exercise 6")

def greedy_replace(model, students, batches):
    """Algorithm 1. Returns (teacher_loss, trajectory): one entry per round, {"k": linear layers
    after it, "layer": the one swapped, "val_loss", "rel_change": val_loss / teacher_loss - 1,
    "candidates": [every layer's loss this round, None where already linear]}."""
    raise NotImplementedError("exercise 6")

def select_models(teacher_loss, trajectory, tolerance):
    """(M_best, M_opt), each {"linear_layers": sorted list, "val_loss"}. M_best: the lowest loss
    seen, the teacher included, ties to more linear layers. M_opt: the most linear layers with
    val_loss <= (1 + tolerance) * teacher_loss (the teacher if none)."""
    raise NotImplementedError("exercise 6")

# ---- exercise 7: an open experiment ----

def reverse_greedy(model, students, batches):
    """Start all-linear, restore full attention one layer per round. Returns [{"k": linear layers
    left after the round, "layer": the one restored, "val_loss"}, ...], L entries. Hands the model back.
    On a finished run: python experiments/reverse_greedy.py out/shakespeare_char-tiny/gla --solution my_solution.py"""
    raise NotImplementedError("exercise 7")
