"""
The linear-attention students of Distill-then-Replace (arXiv 2601.11667, §3.1): drop-in
replacements for the teacher's CausalSelfAttention (the same forward(x, cache)), each started from
its teacher layer's q/k/v/o. dtr.py distills them and swaps them in; this file only defines them.

A student is one core, the rule that writes its fixed-size state (kernel.py), plus the same levers:

    student   core                            q, k                                  output
    hedgehog  linear attention                Hedgehog feature map                  normalised by phi(q).z
    gla       linear attention, decay g_t     Hedgehog feature map                  normalised by phi(q).z
    gdn       gated delta rule, decay g_t     Hedgehog map, k L2-normalised         normalised by a ones column
    jet       gated delta rule, decay g_t     SiLU, L2-normalised; v through a      RMSNorm x SiLU output gate
              (JetBlock, arXiv 2508.15884)    dynamic causal convolution

The levers (dtr.py's flags of the same names), each started so that a student starts where it
would without it, or as close as a measured start allows:
- short_conv K: a depthwise causal convolution (kernel K) on q, k and v, started as the identity;
- rotary: where a rotary teacher's rotations go: before the feature map, after it (RoFormer's
  linear form, hedgehog and gla), or none (auto: before, and none for jet, as JetBlock has none);
- out_norm: a per-head RMSNorm and a SiLU output gate on the attention's output (jet always has it);
- window W: a softmax branch over the last W tokens (the teacher's own q, k, rotations and scale),
  mixed with the linear branch by a learned per-head gate. Its cache is W - 1 keys and values.
  dtr.py's default (auto_window) gives one to rotary teachers only, where the linear branch alone
  falls short; a student with window 0 is purely linear.

Read: the feature map and convolution -> the window branch -> Student (q/k/v/o and the levers) ->
the cores -> make_students.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernel import EPS, gated_delta_rule, gated_delta_rule_step, linear_attention, linear_attention_step
from train_teacher import rope

STUDENTS = ("gla", "hedgehog", "gdn", "jet")
NO_LEVERS = dict(short_conv=0, rotary="auto", out_norm=False, window=0)  # a student with no lever pulled
LEVERS = tuple(NO_LEVERS)  # make_students' keywords, dtr.py's flags
SILU_ONE = 1.2785  # silu(1.2785) = 1.0000: an output gate that starts open, passing y unchanged

# ---- the feature map, and the short causal convolution ----

def hedgehog_feature_map(x, w):
    """Hedgehog's feature map phi(x) = softmax([xW, -xW]) per head: x (B, nh, T, hs), W (nh, hs, hs)
    -> (B, nh, T, 2 hs), non-negative, each row summing to 1. With W = I, phi(q).phi(k) is a
    smooth, positive stand-in for exp(q.k) that training then sharpens."""
    x = x @ w  # each head its own map
    return torch.cat([x, -x], dim=-1).softmax(dim=-1)

def causal_conv(x, weight, past):
    """Depthwise causal convolution, y_t = sum_j weight[..., j] x_(t - K + 1 + j), channel by channel.
    x (B, T, D); weight (D, K), or (B, T, D, K) for a kernel per token (JetBlock's dynamic
    convolution); past (B, K - 1, D): the inputs before x (zeros at a sequence's start). Returns
    y (B, T, D) and the last K - 1 inputs, the next call's past: the decode state (fla's
    ShortConvolution cache)."""
    K = weight.size(-1)
    xp = torch.cat([past.to(x.dtype), x], dim=1)  # (B, K - 1 + T, D)
    y = (xp.unfold(1, K, 1) * weight).sum(-1)  # windows (B, T, D, K) against the kernel
    return y, xp[:, xp.size(1) - (K - 1):].clone()  # a copy: a view would hold the whole prefill

def identity_kernel(D, K):
    """A (D, K) convolution kernel that passes x_t through unchanged: 1 on the newest tap."""
    w = torch.zeros(D, K)
    w[:, -1] = 1.0
    return w

# ---- the sliding-window softmax branch ----

def window_attention(q, k, v, window, scale, past=None):
    """Softmax attention of every query over the last `window` keys, itself included: q, k, v
    (B, nh, T, hs), rotated as the teacher rotates them; past: (k, v) of the up to window - 1 tokens
    before these, or None. Returns y (B, nh, T, hs) and (k, v) of the last window - 1 tokens, a
    cache whose size does not grow with the context. The band mask is T x (T + window): O(T^2)
    memory in training, written for reading rather than for long prefills."""
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    T, S = q.size(2), k.size(2)
    i = torch.arange(S - T, S, device=q.device)[:, None]  # the queries' positions among the keys
    j = torch.arange(S, device=q.device)[None]
    band = (j <= i) & (j > i - window)  # (T, S)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=band, scale=scale)
    keep = S - min(window - 1, S)
    return y, (k[:, :, keep:].clone(), v[:, :, keep:].clone())  # copies: a view would hold the whole prefill

# ---- what every student shares: the teacher's q/k/v/o, the levers, forward(x, cache) ----

class Student(nn.Module):
    """q/k/v/o start as copies of the teacher's (a key and value head per query head:
    c_attn_per_query_head), the levers as described at the top; a subclass defines `core`, the
    linear attention proper. forward(x (B, T, C), cache) -> (B, T, C), as CausalSelfAttention's.
    The cache (new_cache) is a dict of fixed-size tensors, filled on first use: the core's state,
    the convolutions' last inputs, the window's last keys and values, and "n", the tokens seen."""

    def __init__(self, teacher_attn, short_conv=0, rotary="auto", out_norm=False, window=0):
        super().__init__()
        self.n_head, self.rope = teacher_attn.n_head, teacher_attn.rope
        self.rotary = "none" if self.rope is None else rotary
        self.scale = teacher_attn.scale  # the window's softmax: the teacher's (None: 1 / sqrt(hs))
        self.c_attn = teacher_attn.c_attn_per_query_head()
        self.c_proj = copy.deepcopy(teacher_attn.c_proj)
        C = self.c_attn.in_features
        hs = C // self.n_head
        self.gate = None  # the decay, for the cores that have one
        self.conv = nn.Parameter(identity_kernel(3 * C, short_conv)) if short_conv else None  # on q, k, v
        self.window, self.window_only = window, False  # window_only: the linear branch switched off (a check)
        if window:  # y = lam y_window + (1 - lam) y_linear, lam_t = sigmoid(x W + b) per head
            self.window_gate = nn.Linear(C, self.n_head)  # b: the teacher head's share inside the window
            nn.init.zeros_(self.window_gate.weight)
            nn.init.zeros_(self.window_gate.bias)
        self.out_norm = None
        if out_norm:  # y_h -> rmsnorm(y_h) w_h silu(x W_o + b_o): w_h from the teacher head's output scale
            self.out_norm = nn.Parameter(torch.ones(self.n_head, 1, hs))
            self.out_gate = nn.Linear(C, C)
            nn.init.zeros_(self.out_gate.weight)
            nn.init.constant_(self.out_gate.bias, SILU_ONE)

    def new_cache(self, batch_size, max_len):
        """Everything decoding carries, none of it growing with the context: filled on first use."""
        return {"n": 0}

    def decay(self, x):
        """x (B, T, C) -> log g_t (B, nh, T), fp32."""
        return (F.logsigmoid(self.gate(x).float()) / 16).transpose(1, 2)

    def convolve(self, name, x, weight, cache):
        """causal_conv with its past taken from and handed back to cache[name]."""
        past = None if cache is None else cache.get(name)
        if past is None:
            past = x.new_zeros(x.size(0), weight.size(-1) - 1, x.size(2))
        y, past = causal_conv(x, weight, past)
        if cache is not None:
            cache[name] = past
        return y

    def rotate(self, q, k, start):
        """The teacher's rotations at positions start, start + 1, ...; nothing for a teacher without them."""
        return (rope(q, start, *self.rope), rope(k, start, *self.rope)) if self.rope else (q, k)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        hs = C // self.n_head
        start = 0 if cache is None else cache["n"]  # the first position: after the tokens the cache has seen
        qkv = self.c_attn(x)  # (B, T, 3 C)
        if self.conv is not None:
            qkv = self.convolve("conv", qkv, self.conv, cache)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in qkv.split(C, dim=2))  # (B, nh, T, hs)
        y = self.core(x, q, k, v, start, cache).float()  # (B, nh, T, hs)
        if self.window:
            qr, kr = self.rotate(q, k, start)
            past = None if cache is None or "window_k" not in cache else (cache["window_k"], cache["window_v"])
            y_window, (wk, wv) = window_attention(qr, kr, v, self.window, self.scale, past)
            if cache is not None:
                cache["window_k"], cache["window_v"] = wk, wv
            lam = torch.sigmoid(self.window_gate(x).float()).transpose(1, 2)[..., None]  # (B, nh, T, 1)
            y = y_window.float() if self.window_only else lam * y_window.float() + (1 - lam) * y
        if self.out_norm is not None:
            gate = F.silu(self.out_gate(x).float()).view(B, T, self.n_head, hs).transpose(1, 2)
            y = F.rms_norm(y, (hs,), eps=1e-5) * self.out_norm * gate
        if cache is not None:
            cache["n"] = start + T
        return self.c_proj(y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C))

# ---- the cores: how each student writes and reads its state ----

class LinearAttention(Student):
    """hedgehog (gated=False) and gla (gated=True, our compact GLA): softmax(q.k) becomes
    phi(q).phi(k) with a learned Hedgehog feature map per head (W initialised to the identity),
    and gla adds a data-dependent per-head decay g_t in (0, 1].
    Rotary teachers (rotary=): "before" rotates q and k as the teacher does, then maps them, so
    phi starts from the very vectors the teacher compares; "after" is RoFormer's linear form,
    y_t = sum_s (R_t phi(q_t)).(R_s phi(k_s)) v_s / sum_s phi(q_t).phi(k_s), rotations of the
    2 hs-wide features (their own frequencies) in the numerator only, where R_t^T R_s = R_(s-t)
    keeps the relative position exact and the unrotated denominator positive; "none" drops them."""

    def __init__(self, teacher_attn, gated, **levers):
        super().__init__(teacher_attn, **levers)
        self.rotary = "before" if self.rotary == "auto" else self.rotary
        hs = self.c_attn.in_features // self.n_head
        eye = torch.eye(hs).repeat(self.n_head, 1, 1)  # (nh, hs, hs)
        self.fmap_q = nn.Parameter(eye.clone())
        self.fmap_k = nn.Parameter(eye.clone())
        if gated:  # log g_t = logsigmoid(x W + b) / 16 per head, as in GLA: started at g ~ 0.999 (long
            self.gate = nn.Linear(self.c_attn.in_features, self.n_head)  # memory); dtr.start_students then
            nn.init.zeros_(self.gate.weight)  # starts each head at its teacher head's reach
            nn.init.constant_(self.gate.bias, 4.0)

    def linear(self, q, k, v, log_g, cache, name, normalize):
        """linear_attention over T tokens: chunked in training; with a cache, the recurrent step
        (T = 1, constant work per token) or the chunked form from and back to cache[name]."""
        if cache is None:
            return linear_attention(q, k, v, log_g, normalize=normalize)
        if q.size(2) == 1:
            y, cache[name] = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], None if log_g is None else
                                                   log_g[..., 0], cache.get(name), normalize=normalize)
            return y[:, :, None]
        y, cache[name] = linear_attention(q, k, v, log_g, normalize=normalize, initial_state=cache.get(name),
                                          output_final_state=True)
        return y

    def core(self, x, q, k, v, start, cache):
        if self.rotary == "before":
            q, k = self.rotate(q, k, start)
        q, k = hedgehog_feature_map(q, self.fmap_q), hedgehog_feature_map(k, self.fmap_k)  # (B, nh, T, 2 hs)
        log_g = None if self.gate is None else self.decay(x)
        if self.rotary != "after":
            return self.linear(q, k, v, log_g, cache, "state", normalize=True)
        theta = self.rope[0]
        num = self.linear(rope(q, start, theta), rope(k, start, theta), v, log_g, cache, "state", normalize=False)
        den = self.linear(q, k, torch.ones_like(v[..., :1]), log_g, cache, "z", normalize=False)  # (B, nh, T, 1)
        return num / (den + EPS)

class GatedDeltaNet(LinearAttention):
    """Gated DeltaNet (arXiv 2412.06464): the gla student's projections, feature maps and gate, with
    the state written by the gated delta rule

        S_t = g_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t [v_t, 1]^T,   y_t = S_t^T q_t,   o_t = y_t[:hs] / y_t[hs]

    Each write corrects what S already returns for k_t instead of adding to it, so a key written
    with beta = 1 reads back exactly its value: the in-context recall an additive state blurs.
    Where distillation starts, and what was measured (without the division below, or with beta
    starting at 0.5 or 0.02, it distilled worse on the tiny preset):
    - q, k: the Hedgehog map (features >= 0 keep q.z, the normaliser below, positive); k then
      L2-normalised (the delta rule needs ||k|| = 1 to stay stable); q's scale cancels in the ratio.
    - o: a column of ones rides along with v, and dividing by its read q.z makes each output a
      weighted average of values, on the teacher's scale, while keeping exact recall.
    - beta_t = sigmoid(x W + b), W = 0, b = -2 (beta ~ 0.12): on nearly uniform features at init,
      the delta rule averages the last ~8 tokens' values, close to the teacher's broad heads.
    - g_t as in gla (dtr.start_students). rotary: before or none."""

    chunk_size = 32  # measured 7% faster per distillation step than 64 at T = 128 on a CPU

    def __init__(self, teacher_attn, **levers):
        super().__init__(teacher_attn, gated=True, **levers)
        self.beta = nn.Linear(self.c_attn.in_features, self.n_head)  # the write strength beta_t per head
        nn.init.zeros_(self.beta.weight)
        nn.init.constant_(self.beta.bias, -2.0)

    def delta(self, q, k, v, x, cache):
        """gated_delta_rule over T tokens (q, k (B, nh, T, D), v (B, nh, T, Dv)): chunked in training;
        with a cache, the rank-one step (T = 1) or the chunked form from and back to cache["state"]."""
        beta, log_g = torch.sigmoid(self.beta(x).float()).transpose(1, 2), self.decay(x)  # (B, nh, T) each
        if cache is None:
            return gated_delta_rule(q, k, v, beta, log_g, chunk_size=self.chunk_size)
        if q.size(2) == 1:
            y, cache["state"] = gated_delta_rule_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], beta[..., 0],
                                                      log_g[..., 0], cache.get("state"))
            return y[:, :, None]
        y, cache["state"] = gated_delta_rule(q, k, v, beta, log_g, cache.get("state"), output_final_state=True,
                                             chunk_size=self.chunk_size)
        return y

    def core(self, x, q, k, v, start, cache):
        if self.rotary == "before":
            q, k = self.rotate(q, k, start)
        q, k = hedgehog_feature_map(q, self.fmap_q), hedgehog_feature_map(k, self.fmap_k)  # (B, nh, T, 2 hs)
        q, k = q.float(), F.normalize(k, dim=-1)  # fp32 q: an fp32 ratio below
        y = self.delta(q, k, F.pad(v, (0, 1), value=1.0), x, cache)  # (B, nh, T, hs + 1): the ones column's read is q.z
        # subtle: with features >= 0, q.z is positive in practice (>= 0.007 seen, the smallest at
        # t = 0 where it is beta q.k and the ratio is exactly v_0); the clamp only guards the division
        return y[..., :-1] / y[..., -1:].clamp_min(EPS)  # (B, nh, T, hs)

class JetBlock(GatedDeltaNet):
    """JetBlock (Jet-Nemotron, arXiv 2508.15884; its jet_block.py and dynamic_conv.py), the DtR
    paper's student for Llama: the gated delta rule on

        q, k = L2norm(SiLU(x W_q)), L2norm(SiLU(x W_k))       no rotations, no feature map
        v_t = sum_j K_t[j] (x W_v)_(t - 3 + j)                 a kernel-4 causal convolution whose
        K_t = K_static + W_2 SiLU(W_1 x_t)                     kernel is generated from x_t (W_1: C -> C / 8)
        o_t = RMSNorm(S_t^T q_t) w SiLU(x_t W_g)               an output norm and gate, then W_o

    Theirs: the core, SiLU and L2 norm on q and k, the dynamic convolution on v only (reduction 8,
    SiLU in the generator), the gated RMSNorm on the output, no rotations. Ours, for a start from a
    teacher: q/k/v/o copied from it at its head size (no 2x value expansion); the static kernel
    starts as the identity (theirs random) and W_2 at zero, W_1 random (with both at zero, as
    theirs start before the model's own init, neither would get a gradient), so v starts as the
    teacher's; no SiLU on v (it would distort the teacher's values); GLA's decay started at the
    teacher head's reach instead of Mamba-2's A and dt; beta's bias -2 as gdn's; the output gate
    starts open (SiLU(1.28) = 1) and the norm's weight at the teacher head's output scale, per
    head (dtr.start_students)."""

    def __init__(self, teacher_attn, kernel_size=4, reduction=8, **levers):
        super().__init__(teacher_attn, **{**levers, "out_norm": True})
        self.rotary = "none" if levers.get("rotary", "auto") == "auto" else self.rotary
        del self.fmap_q, self.fmap_k  # no feature map
        C = self.c_attn.in_features
        self.v_conv_static = nn.Parameter(identity_kernel(C, kernel_size))  # (C, K)
        self.v_conv_w1 = nn.Linear(C, C // reduction, bias=False)  # the kernel generator, GPT-2's init
        nn.init.normal_(self.v_conv_w1.weight, std=0.02)
        self.v_conv_w2 = nn.Linear(C // reduction, C * kernel_size, bias=False)
        nn.init.zeros_(self.v_conv_w2.weight)

    def core(self, x, q, k, v, start, cache):
        if self.rotary == "before":
            q, k = self.rotate(q, k, start)
        q, k = F.normalize(F.silu(q.float()), dim=-1), F.normalize(F.silu(k.float()), dim=-1)
        B, nh, T, hs = v.shape
        kernel = self.v_conv_static + self.v_conv_w2(F.silu(self.v_conv_w1(x))).view(B, T, nh * hs, -1)  # (B, T, C, K)
        v = self.convolve("v_conv", v.transpose(1, 2).reshape(B, T, nh * hs), kernel, cache)
        return self.delta(q, k, v.view(B, T, nh, hs).transpose(1, 2), x, cache)  # (B, nh, T, hs)

def auto_window(config):
    """window=-1 (auto, dtr.py's default): a window where the linear students alone fall short, a
    rotary teacher's (RESULTS.md's lever table), an eighth of its context up to LoLCATs' and
    Liger's 64 tokens; none for a teacher with learned positions. config: the teacher's GPTConfig."""
    return min(64, config.block_size // 8) if config.pos == "rope" else 0

def make_students(model, kind, **levers):
    """One student per block, initialised from that block's attention. kind: one of STUDENTS;
    levers: short_conv, rotary, out_norm, window (see the top of the file; window=-1: auto_window)."""
    if levers.get("rotary") == "after" and kind not in ("hedgehog", "gla"):  # (dtr.py's Config.check says so first)
        raise ValueError(f"rotary='after' (RoFormer's linear form) is for hedgehog and gla, not {kind}")
    if levers.get("window", 0) < 0:
        levers["window"] = auto_window(model.config)
    make = {"hedgehog": lambda attn: LinearAttention(attn, gated=False, **levers),
            "gla": lambda attn: LinearAttention(attn, gated=True, **levers),
            "gdn": lambda attn: GatedDeltaNet(attn, **levers), "jet": lambda attn: JetBlock(attn, **levers)}[kind]
    return [make(block.attn) for block in model.transformer.h]

def student_levers(config):
    """The levers of a run's settings: its Config, or a dict such as a checkpoint's "config" (one
    written before a lever existed lacks it: the default)."""
    config = config if isinstance(config, dict) else vars(config)
    return {k: config[k] for k in LEVERS if k in config}
