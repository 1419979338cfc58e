"""
The teacher: a nanoGPT-style GPT, its data and its training loop. Distill-then-Replace starts
from "a pretrained model"; this file makes one, and dtr.py builds the method on top of it.

    python train_teacher.py --dataset shakespeare_char          # writes out/shakespeare_char-cpu/teacher.pt
    torchrun --standalone --nproc_per_node=2 train_teacher.py   # the same, data-parallel over 2 processes

Or bring your own: --init_from takes a nanoGPT checkpoint (ckpt.pt, with its meta.pkl), GPT-2 or
a Llama, Qwen2 or Mistral model (through Hugging Face transformers: pretrained.py reads them) and
writes it as teacher.pt, with its own tokenizer.

dtr.py calls load_or_train() itself, so a separate run is only needed to train a teacher on its
own. An interrupted run resumes from teacher.partial.pt, written every save_interval steps.

Read in nanoGPT's order: the model, the data, training, a teacher you already have, main. The
plumbing every script shares (settings, errors, files, device, torchrun) is in plumbing.py.
"""
import copy
import dataclasses
import math
import os
import time
import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from plumbing import (DtrError, Pace, Partial, atomic_save, autocast, barrier, check_resumable, choose_device, claim, cli,
                      first_words, load_file, opt, parse_flags, rank, validate, world)
from prepare import BUILTIN, check_split, data_name, decode, encode, load_data
from pretrained import INIT_FIX, check_keys, check_logits, import_settings, init_sha256, read_source

# ---- the model (nanoGPT's, module names kept) ----
# One GPT for GPT-2, Llama, Qwen2 and Mistral, as litgpt has it: the switches below the line in
# GPTConfig change norm, MLP, positions and key/value heads, each in a few lines where it acts.
# With their defaults this is nanoGPT's GPT, parameter for parameter.

@dataclass
class GPTConfig:
    block_size: int = 128
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in the Linears and LayerNorms (nanoGPT's own checkpoints usually have none)
    gelu: str = "none"  # F.gelu's approximation: "tanh" in GPT-2 itself
    # -- the families' switches
    n_kv_head: int = 0  # key/value heads for grouped-query attention, each read by n_head / n_kv_head query heads; 0: n_head
    qkv_bias: bool = False  # biases on q, k and v even where `bias` is off (Qwen2)
    scale_attn: bool = True  # softmax(q.k / sqrt(hs)); False: softmax(q.k) (GPT-2's scale_attn_weights=False)
    norm: str = "layernorm"  # or "rmsnorm" (Llama): x / rms(x) * weight, no mean, no bias
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # or "swiglu" (Llama): c_proj(silu(x W_gate) * x W_up)
    mlp_hidden: int = 0  # the MLP's hidden width; 0: 4 n_embd
    pos: str = "learned"  # or "rope": rotary embeddings of q and k in every layer instead of wpe
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # Llama 3.1's: factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    tie_embeddings: bool = True  # lm_head and wte share one matrix

def rope(x, start, theta, scaling=None):
    """Rotary position embedding (RoFormer) in Llama's layout: channel i of a head's first half and
    channel i of its second half turn together, by the angle position x inv_freq[i]; q.k then
    depends on positions only through their difference. x (B, nh, T, hs), positions start..start+T-1."""
    hs, T = x.size(-1), x.size(-2)
    inv_freq = 1.0 / theta ** (torch.arange(0, hs, 2, device=x.device).float() / hs)  # (hs / 2,)
    if scaling:  # Llama 3.1: wavelengths past the original context slowed by `factor`, short ones kept, a ramp between
        ramp = (scaling["original_max_position_embeddings"] * inv_freq / (2 * math.pi) - scaling["low_freq_factor"]) / \
               (scaling["high_freq_factor"] - scaling["low_freq_factor"])
        ramp = ramp.clamp(0, 1)
        inv_freq = (1 - ramp) * inv_freq / scaling["factor"] + ramp * inv_freq
    angle = torch.arange(start, start + T, device=x.device).float()[:, None] * inv_freq  # (T, hs / 2)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

def norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)

class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head or config.n_head
        kv = self.n_kv_head * (config.n_embd // config.n_head)
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * kv, bias=config.bias or config.qkv_bias)  # q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.scale = None if config.scale_attn else 1.0  # None: scaled_dot_product_attention's 1 / sqrt(hs)
        self.rope = (config.rope_theta, config.rope_scaling) if config.pos == "rope" else None

    def c_attn_per_query_head(self):
        """A copy of c_attn with a key and a value head for every query head (a linear student's start:
        its heads may then part ways). Query head h reads key/value head h // (nh / n_kv), as in
        forward, so each key/value head's block of hs rows is repeated for the query heads that read
        it; repeating each row instead would hand head h rows of other heads."""
        c_attn, rep = copy.deepcopy(self.c_attn), self.n_head // self.n_kv_head
        if rep > 1:
            C = c_attn.in_features
            grow = lambda t: torch.cat([t[:C]] + [kv.unflatten(0, (self.n_kv_head, -1)).repeat_interleave(rep, dim=0).flatten(0, 1)
                                                  for kv in t[C:].chunk(2)])  # (C + 2 C / rep, ...) -> (3 C, ...)
            c_attn.weight = nn.Parameter(grow(c_attn.weight.detach()))
            c_attn.bias = None if c_attn.bias is None else nn.Parameter(grow(c_attn.bias.detach()))
            c_attn.out_features = 3 * C
        return c_attn

    def new_cache(self, batch_size, max_len):
        """KV cache for generation: keys and values of every token seen, so it grows with context."""
        hs = self.c_attn.in_features // self.n_head
        kv = self.c_proj.weight.new_zeros(batch_size, self.n_kv_head, max_len, hs)
        return {"k": kv, "v": kv.clone(), "n": 0}

    def qkv(self, x, n=0):
        """x (B, T, C) -> q (B, nh, T, hs), k and v (B, n_kv, T, hs); with rotary positions, q and k
        turned to their positions n, n + 1, ... (n: the tokens seen before x)."""
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_head, hs).transpose(1, 2) for t in (k, v))  # (B, n_kv, T, hs)
        if self.rope:
            q, k = rope(q, n, *self.rope), rope(k, n, *self.rope)
        return q, k, v

    @torch.no_grad()
    def attention_weights(self, x):
        """x (B, T, C) -> the softmax attention (B, nh, T, T): row i, what query i takes from each key <= i."""
        q, k, _ = self.qkv(x)
        T = x.size(1)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, T, hs), as in forward
        scores = (q @ k.transpose(-1, -2)) * (self.scale or q.size(-1) ** -0.5)  # (B, nh, T, T)
        return scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf")).softmax(-1)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        n = cache["n"] if cache is not None else 0  # the tokens seen before these
        q, k, v = self.qkv(x, n)
        if cache is not None:  # append to the cache, then attend over everything seen so far
            cache["k"][:, :, n:n + T], cache["v"][:, :, n:n + T] = k, v
            cache["n"] = n + T
            k, v = cache["k"][:, :, :n + T], cache["v"][:, :, :n + T]
        if self.n_kv_head < self.n_head:  # query head h reads key/value head h // (nh / n_kv), as transformers' repeat_kv
            k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))  # (B, nh, n + T, hs)
        # query i sees keys <= n + i: the plain causal mask when nothing came before, none at all for
        # a single new token, else the causal mask shifted by n
        mask = None if n == 0 or T == 1 else torch.ones(T, n + T, dtype=torch.bool, device=x.device).tril(diagonal=n)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=n == 0, scale=self.scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.c_proj(y), self.dropout, self.training)

class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        hidden, self.swiglu = config.mlp_hidden or 4 * config.n_embd, config.mlp == "swiglu"
        self.c_fc = nn.Linear(config.n_embd, hidden * (2 if self.swiglu else 1), bias=config.bias)  # swiglu: gate, then up
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.gelu = config.gelu

    def forward(self, x):
        if self.swiglu:
            gate, up = self.c_fc(x).chunk(2, dim=-1)
            return self.dropout(self.c_proj(F.silu(gate) * up))
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate=self.gelu)))

class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)  # dtr.py swaps a linear student in here (setattr)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))

class Cache:
    """What generation carries from call to call: one cache per layer, of that layer's kind (a KV
    cache for full attention, the fixed-size state for linear attention), and the tokens fed so far."""

    def __init__(self, model, batch_size, max_len):
        self.layers = [block.attn.new_cache(batch_size, max_len) for block in model.transformer.h]
        self.pos = 0

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm(config),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():  # GPT-2's scaled init of the residual projections
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def embed(self, idx, start=0):
        T = idx.size(1)
        assert start + T <= self.config.block_size, f"position {start + T} is past the context of {self.config.block_size}"
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.transformer.wpe is not None:  # learned positions; rope turns q and k in every layer instead
            x = x + self.transformer.wpe(torch.arange(start, start + T, device=idx.device))
        return self.transformer.drop(x)

    def head(self, x, targets=None):
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        # targets of -1 are not scored: the copy task masks the first copy of each passage
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def forward(self, idx, targets=None, cache=None):
        """cache: None, or a Cache carried from call to call while generating: the first call
        prefills the prompt, each later call feeds only the newest tokens."""
        x = self.embed(idx, cache.pos if cache else 0)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache.layers[i] if cache else None)
        if cache:
            cache.pos += idx.size(1)
        return self.head(x, targets)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.8, top_k=40, generator=None):
        """Sample with a Cache: one prefill, then one token per call. Once the window is full,
        start again from its last half (a sliding window, refreshed in jumps)."""
        window, cache, logits = self.config.block_size, None, None
        for _ in range(max_new_tokens):
            if logits is None:  # the first prefill, or a refresh from the last half of the window
                context = idx[:, -(max(1, window // 2) if cache else window):]
                cache = Cache(self, idx.size(0), window)
                logits, _ = self(context, cache=cache)
            logits = logits[:, -1, :].float() / temperature
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
            # feed the new token while a later one still fits; else the next step refreshes
            logits = self(idx_next, cache=cache)[0] if cache.pos + 1 < window else None
        return idx

def sample_text(model, meta, n_tokens, device, seed):
    """n_tokens generated after a newline (or the vocabulary's first token, where it has no newline), as text."""
    try:
        start = encode("\n", meta)
    except DtrError:
        start = [0]
    gen = torch.Generator(device=device).manual_seed(seed)
    return decode(model.generate(torch.tensor([start], device=device), n_tokens, generator=gen)[0].tolist(), meta)

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")

def model_args(cfg, meta):
    """The GPTConfig of a teacher trained here: --arch gpt2 is nanoGPT's; llama has rotary positions,
    half as many key/value heads as query heads, RMSNorm, a SwiGLU MLP of about the same size
    (3 matrices of 8/3 n_embd instead of 2 of 4 n_embd) and no biases."""
    args = dict(vocab_size=len(meta["vocab"]), dropout=cfg.dropout, **{f: getattr(cfg, f) for f in MODEL_FIELDS})
    if cfg.arch == "llama":
        n_kv = max(d for d in range(1, cfg.n_head // 2 + 1) if cfg.n_head % d == 0) if cfg.n_head > 1 else 1
        args.update(pos="rope", n_kv_head=n_kv, norm="rmsnorm", mlp="swiglu", mlp_hidden=32 * round(8 * cfg.n_embd / 96), bias=False)
    return args

def load_model(path, device, fix, prepare=None):
    """The one loader of models: rebuild the GPT in a checkpoint (prepare(model, ckpt) may swap
    students in first, for a hybrid) and load its weights. Returns (model in eval mode, ckpt)."""
    ckpt = load_file(path, fix, ("model_args", "state_dict", "meta"))
    try:
        model = GPT(GPTConfig(**ckpt["model_args"]))
        if prepare:
            prepare(model, ckpt)
        model.load_state_dict(ckpt["state_dict"])
    except (TypeError, KeyError, RuntimeError) as e:  # another architecture's weights
        raise DtrError(f"{path} does not fit the model it describes ({type(e).__name__}: {first_words(e)}); {fix}") from None
    return model.to(device).eval(), ckpt

# ---- batches (the data itself, text -> token ids, is prepared in prepare.py) ----

def windows(data, starts, block_size, device):
    """x = the windows of block_size tokens at `starts`, y = the next token at each place, both (B, T)."""
    x = torch.stack([data[i:i + block_size] for i in starts]).long()
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in starts]).long()
    return x.to(device), y.to(device)

def get_batch(data, block_size, batch_size, device, generator=None):
    """Random windows for training."""
    return windows(data, torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator), block_size, device)

def window_starts(n_tokens, block_size, n, test=False):
    """n window starts spread evenly over a split of n_tokens, in exact integer arithmetic (a float32
    linspace rounds past the last valid start once a split passes 2^24 tokens): start i is
    floor(i M / (n - 1)) with M = n_tokens - block_size - 1 the last valid start. test=True: the n - 1
    starts halfway between those, floor((2i + 1) M / (2 (n - 1)))."""
    M, d = n_tokens - block_size - 1, max(1, n - 1)
    return [(2 * i + 1) * M // (2 * d) for i in range(n - 1)] if test else [i * M // d for i in range(n)]

def fixed_batches(data, block_size, batch_size, n_batches, device, split="validation", test=False):
    """Deterministic windows spread evenly over the split: every candidate in the greedy
    search sees exactly the same tokens, so loss differences are real, not sampling noise.
    test=True: the windows halfway between those, one fewer: held-out test batches that share
    no window with the search batches (apart from each other by >= block_size tokens when the
    split has room)."""
    check_split(data, block_size, split)
    starts = window_starts(len(data), block_size, n_batches * batch_size, test)
    return [windows(data, starts[i:i + batch_size], block_size, device) for i in range(0, len(starts), batch_size)]

def repeat_first_half(x, y, n):
    """The first n rows of a training batch (x, y: (B, T)) become their first half shown twice,
    with the targets of that sequence: the copy task's pattern, for a teacher to learn from."""
    T, half = x.size(1), x.size(1) // 2
    x2, y2 = x.clone(), y.clone()
    x2[:n, half:] = x[:n, :T - half]
    y2[:n, half - 1] = x[:n, 0]  # the last token of the first copy is followed by the first of the second
    y2[:n, half:] = y[:n, :T - half]
    return x2, y2

# ---- training ----

# the settings a resumed run must share with the run that wrote teacher.partial.pt
TRAIN_FIELDS = ("seed", "batch_size", "max_iters", "lr", "min_lr", "warmup_iters", "weight_decay", "grad_clip", "dropout", "copy_frac")

def cosine_lr(it, lr, min_lr, warmup, total):
    """The learning rate at step `it`: linear warmup, then cosine decay from lr to min_lr (as in nanoGPT)."""
    if it < warmup:
        return lr * (it + 1) / warmup
    progress = (it - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)

def teacher_key(cfg, meta, fields=MODEL_FIELDS + ("copy_frac",)):
    """What a teacher must share with this run: the data first (the likeliest difference), then the
    model; a half-trained one (teacher.partial.pt) its schedule too."""
    return {"dataset": meta["dataset"], "tokenizer": meta["tokenizer"], "data_sha256": meta["source_sha256"],
            "tokenizer_sha256": meta.get("tokenizer_sha256"),  # an imported teacher's ids (prepare.py)
            "init_from": getattr(cfg, "init_from", ""), "arch": getattr(cfg, "arch", "gpt2"), **{f: getattr(cfg, f) for f in fields}}

@torch.no_grad()
def val_loss(model, batches, device="cpu", bf16=False):
    """Mean next-token loss over fixed batches."""
    with autocast(device, bf16):
        return sum(model(x, y)[1].item() for x, y in batches) / len(batches)

def train(cfg, train_data, val_data, meta, device, bf16, ckpt_path):
    """Train from scratch, or resume, and write the checkpoint atomically. Returns (model, training seconds).
    Under torchrun each process takes its own slice of every step's batch (DistributedDataParallel
    averages the gradients), so a step sees the same batch_size sequences at any process count."""
    micro = cfg.batch_size // (cfg.grad_accum * world())  # sequences per forward pass
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**model_args(cfg, meta))).to(device)
    shape = f" ({model.config.n_kv_head} key/value), rope, RMSNorm, SwiGLU" if cfg.arch == "llama" else ""
    print(f"teacher  {cfg.n_layer} layers, {cfg.n_head} heads{shape}, {cfg.n_embd} wide, context {cfg.block_size}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {cfg.max_iters} steps of {cfg.batch_size} sequences")
    # weight decay on matrices only, as in nanoGPT
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    val_b = fixed_batches(val_data, cfg.block_size, cfg.batch_size, cfg.val_batches, device)
    gen = torch.Generator().manual_seed(cfg.seed)  # the same on every process: the same batches
    # ---- resume: continue from teacher.partial.pt, written every save_interval steps
    partial, start = Partial(ckpt_path[:-3] + ".partial.pt", teacher_key(cfg, meta, MODEL_FIELDS + TRAIN_FIELDS)), 0
    if (saved := partial.load()) is not None:
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        gen.set_state(saved["gen"])
        torch.set_rng_state(saved["rng"])  # dropout masks on the CPU; a GPU's are not restored
        start = saved["step"]
        print(f"teacher  resuming {partial.path} at step {start}/{cfg.max_iters}")
    ddp_model = DDP(model) if world() > 1 else model  # ---- torchrun: all-reduces gradients in backward
    pace = Pace(start, cfg.max_iters)
    for it in range(start, cfg.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(it, cfg.lr, cfg.min_lr, cfg.warmup_iters, cfg.max_iters)
        x, y = get_batch(train_data, cfg.block_size, cfg.batch_size, device, gen)  # the whole step's batch
        if cfg.copy_frac:  # some rows repeat their first half (before slicing: same global batch)
            x, y = repeat_first_half(x, y, int(cfg.copy_frac * len(x)))
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for m in range(cfg.grad_accum):
            i = (rank() * cfg.grad_accum + m) * micro  # this process's m-th slice of the batch
            if world() > 1:  # all-reduce once per step, on the last micro-batch (as nanoGPT does)
                ddp_model.require_backward_grad_sync = m == cfg.grad_accum - 1
            with autocast(device, bf16):
                _, loss = ddp_model(x[i:i + micro], y[i:i + micro])
            (loss / cfg.grad_accum).backward()  # equal slices: the mean of means is the batch mean
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if not math.isfinite(loss.item()):
            raise DtrError(f"teacher training diverged (loss {loss.item()}) at step {it + 1}; lower --lr (now {cfg.lr})")
        if (it + 1) % cfg.save_interval == 0 and it + 1 < cfg.max_iters:
            partial.save(state_dict=model.state_dict(), optimizer=optimizer.state_dict(),
                         step=it + 1, gen=gen.get_state(), rng=torch.get_rng_state())
        last = it == cfg.max_iters - 1
        if it % (cfg.eval_interval // 5 or 1) == 0 or last:
            evaluate, t_eval = it % cfg.eval_interval == 0 or last, time.time()
            if evaluate:  # a couple of fixed batches for progress, all of them at the end
                vl = val_loss(model.eval(), val_b if last else val_b[:2], device, bf16)
            pace.paused(time.time() - t_eval)
            print(f"teacher  step {it + 1}/{cfg.max_iters} | train {loss.item():.4f} | " +
                  (f"val {vl:.4f} | " if evaluate else "") + pace(it + 1))
    model.eval()
    train_s = partial.elapsed()  # the runs before a resume included
    atomic_save({"model_args": model_args(cfg, meta), "state_dict": model.state_dict(),
                 "config": dataclasses.asdict(cfg), "meta": meta, "val_loss": vl, "iter_num": cfg.max_iters,
                 "train_s": train_s}, ckpt_path)
    partial.done()
    barrier()  # the other processes read teacher.pt next
    print(f"teacher  val loss {vl:.4f}, saved {ckpt_path}")
    return model, train_s

# ---- a teacher you already have (--init_from): nanoGPT's, GPT-2, or a Llama, Qwen2 or Mistral ----
# pretrained.py reads it as our GPTConfig's arguments and state_dict; here it becomes our GPT, checked.

def import_model(init_from):
    """--init_from's weights in our GPT, in eval mode on the CPU, checked against transformers' logits
    where it came through transformers; and what the source says (read_source)."""
    config, sd, info = read_source(init_from)
    hf, model = info.pop("hf", None), GPT(GPTConfig(**config))
    if model.config.tie_embeddings and "transformer.wte.weight" in sd:
        sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])  # tied to wte; some save it once
    ours = model.state_dict()  # every weight from the file; unused buffers (GPT-2's attention masks) are dropped
    sd = {k: v for k, v in sd.items() if k in ours or not k.endswith((".attn.bias", ".attn.masked_bias"))}
    check_keys(init_from, ours.keys() - sd.keys(), sd.keys() - ours.keys(), ours)
    try:  # a misshapen weight fails
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise DtrError(f"{init_from}'s weights do not fit the model it describes ({first_words(e)}); {INIT_FIX}") from None
    if hf is not None:
        check_logits(model.eval(), hf, init_from)
    return model.eval(), info

def import_teacher(cfg, val_data, meta, device, bf16, path):
    """--init_from written as this run's teacher.pt, so the rest of the pipeline (and a rerun's reuse
    check) takes it like a teacher trained here."""
    model, info = import_model(cfg.init_from)
    if model.config.pos == "rope":  # no table of positions to fit: its context is this run's, not the 128k it allows
        model.config.block_size = cfg.block_size
    model.to(device)
    vl = val_loss(model, fixed_batches(val_data, cfg.block_size, cfg.batch_size, cfg.val_batches, device), device, bf16)
    atomic_save({"model_args": dataclasses.asdict(model.config), "state_dict": model.state_dict(), "meta": meta,
                 "config": dataclasses.asdict(cfg), "val_loss": vl, "init_sha256": init_sha256(cfg.init_from), **info}, path)
    barrier()  # the other processes read teacher.pt next
    said = f" (nanoGPT's best_val_loss {info['best_val_loss']:.4f} at iter {info['iter_num']:.0f})" if "best_val_loss" in info else ""
    kv = f" ({model.config.n_kv_head} key/value)" if model.config.n_kv_head not in (0, cfg.n_head) else ""
    print(f"teacher  imported {cfg.init_from}: {cfg.n_layer} layers, {cfg.n_head} heads{kv}, {cfg.n_embd} wide, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, val loss {vl:.4f}{said}, saved {path}")
    return model

# ---- main: the teacher's settings, and the teacher of a run folder ----

@dataclass
class TeacherConfig:
    """the teacher: its data, model and training (train_teacher.py)"""
    # data
    dataset: str = opt("shakespeare_char", "shakespeare (GPT-2 BPE), shakespeare_char, or path/to/your.txt")
    tokenizer: str = opt("char", "how to tokenize your own text file (auto: an --init_from model's own)", ("char", "gpt2", "auto"))
    data_dir: str = opt("data", "where datasets are downloaded and their encoded splits cached")
    out_dir: str = opt("", "default out/<dataset>-<preset>[-llama]: teacher.pt there, a run per student below it")
    init_from: str = opt("", "a teacher you already have instead of training one: nanoGPT's ckpt.pt, gpt2 (-medium, "
                             "-large, -xl) or a folder saved by save_pretrained; its size and tokenizer replace ours")
    meta: str = opt("", "the meta.pkl of a character-level nanoGPT checkpoint (default: looked for beside it)")
    preset: str = opt("", "model and schedule sizes (default: gpu on CUDA, else cpu)", ("tiny", "cpu", "cpu12", "gpu", "gpt2-cpu"))
    device: str = opt("auto", "where to run", ("auto", "cpu", "cuda", "mps"))
    seed: int = opt(1337, "random seed", ">=0")
    # the model (nanoGPT's)
    arch: str = opt("gpt2", "the teacher trained here: gpt2 (nanoGPT's), or llama (rotary positions, half as many "
                            "key/value heads, RMSNorm, SwiGLU)", ("gpt2", "llama"))
    n_layer: int = opt(6, "transformer blocks", ">0")
    n_head: int = opt(4, "attention heads per block (must divide n_embd)", ">0")
    n_embd: int = opt(128, "model width", ">0")
    block_size: int = opt(128, "context length in tokens", ">0")
    dropout: float = opt(0.0, "dropout while training the teacher", "[0,1)")
    # its training
    batch_size: int = opt(16, "sequences per teacher step (and per validation batch)", ">0")
    grad_accum: int = opt(1, "micro-batches per step and process (batch_size splits over grad_accum x processes)", ">0")
    max_iters: int = opt(2000, "teacher training steps", ">0")
    lr: float = opt(2e-3, "teacher peak learning rate", ">0")
    min_lr: float = opt(2e-4, "teacher learning rate at the end of the cosine", ">=0")
    warmup_iters: int = opt(100, "teacher linear warmup steps", ">=0")
    weight_decay: float = opt(0.1, "AdamW weight decay", ">=0")
    grad_clip: float = opt(1.0, "clip gradients to this norm", ">0")
    eval_interval: int = opt(250, "evaluate the teacher every this many steps", ">0")
    save_interval: int = opt(250, "write a resumable checkpoint every this many teacher or distillation steps", ">0")
    val_batches: int = opt(8, "fixed validation batches, for the teacher's val loss and every comparison after it", ">0")
    copy_frac: float = opt(0.0, "fraction of teacher sequences whose second half repeats the first "
                                "(teaches copying from context, which the copy task measures)", "[0,1)")

    def check(self):
        """Settings that only fail together, or with the machine."""
        for flag in ("out_dir", "data_dir"):
            if os.path.exists(getattr(self, flag)) and not os.path.isdir(getattr(self, flag)):
                raise DtrError(f"--{flag} {getattr(self, flag)} is a file, not a folder; pick a folder (it is created if missing)")
        if self.arch == "llama" and self.n_embd // self.n_head % 2:
            raise DtrError(f"--arch llama turns pairs of channels (rope): --n_embd {self.n_embd} / --n_head {self.n_head} must be even")
        if self.tokenizer == "auto" and not self.init_from:
            raise DtrError("--tokenizer auto is the tokenizer of an --init_from Llama, Qwen2 or Mistral; pick char or gpt2")
        if self.meta and not self.init_from:
            raise DtrError("--meta is the tokenizer of an --init_from checkpoint; give both, or neither")
        if self.n_embd % self.n_head:
            raise DtrError(f"--n_head {self.n_head} does not divide --n_embd {self.n_embd}; "
                           f"pick a head count that does, e.g. --n_head {max(d for d in range(1, self.n_head + 1) if self.n_embd % d == 0)}")
        split = self.grad_accum * world(before_init=True)
        if self.batch_size % split:
            raise DtrError(f"--batch_size {self.batch_size} does not split into --grad_accum {self.grad_accum} "
                           f"x {world(before_init=True)} processes; make it a multiple of {split}")

PRESETS = {
    # the whole pipeline in seconds: for smoke tests and for watching every phase go by
    "tiny": dict(n_layer=4, n_head=2, n_embd=48, block_size=64, batch_size=8, max_iters=200, eval_interval=50,
                 save_interval=10, warmup_iters=10, val_batches=2),
    # a few minutes on a laptop CPU
    "cpu": dict(),
    # twice as deep, where greedy and one-shot importance placement part (paper Fig. 4); fewer
    # teacher steps keep the whole run near 12 minutes on a 2-core CPU
    "cpu12": dict(n_layer=12, max_iters=1200),
    # nanoGPT's baby GPT
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch_size=64,
                max_iters=5000, lr=1e-3, min_lr=1e-4, eval_interval=500, save_interval=500, val_batches=16),
    # for --init_from gpt2: a shorter context and fewer, smaller batches (README: its cost on a CPU)
    "gpt2-cpu": dict(block_size=256, batch_size=4, val_batches=4, save_interval=25),
}

# On a CPU the GPT-2 vocabulary (11,706 rows after remapping) costs more per step than the
# whole 6-layer trunk, so BPE runs take fewer, smaller steps to stay within minutes.
BPE_OVERRIDES = {"cpu": dict(batch_size=8, max_iters=1200)}

def configure(cls, argv, description, presets):
    """Settings from the command line: the dataclass's defaults <- the preset <- the flags given.
    Every value is then checked (validate), so a bad one is one line before any work starts."""
    args = parse_flags(cls, argv, description, {**presets, **{f"{p} on BPE": v for p, v in BPE_OVERRIDES.items()}})  # (--help)
    preset = args.get("preset") or ("gpu" if args.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if preset not in presets:
        raise DtrError(f"unknown --preset {preset!r}; use one of {', '.join(presets)}")
    bpe = BUILTIN.get(args.get("dataset"), args.get("tokenizer")) == "gpt2"
    cfg = cls(**{**presets[preset], **(BPE_OVERRIDES.get(preset, {}) if bpe else {}), **args, "preset": preset})
    if cfg.init_from:
        import_settings(cfg, given=args)
    elif cfg.dataset in BUILTIN and args.get("tokenizer") not in (None, BUILTIN[cfg.dataset]):
        other = [d for d, t in BUILTIN.items() if t == args["tokenizer"]]
        raise DtrError(f"--dataset {cfg.dataset} is tokenized by {BUILTIN[cfg.dataset]}; leave --tokenizer out"
                       + (f", or use --dataset {other[0]}" if other else ""))
    cfg.out_dir = cfg.out_dir or os.path.join("out", f"{data_name(cfg)}-{preset}" + ("-llama" if cfg.arch == "llama" else ""))
    return validate(cfg)

def check_teacher(ckpt, cfg, meta, path, fix=None, folder=None):
    """A saved teacher is reused only if every setting that shaped it matches this run's: the same text
    and tokenizer (their fingerprints, in meta), model and schedule, and an --init_from folder not saved
    again since (folder: where that is now, if not at cfg.init_from as given). Otherwise one line naming
    the first difference, and `fix`."""
    fields = MODEL_FIELDS + ("copy_frac",) + (() if cfg.init_from else TRAIN_FIELDS)
    check_resumable(teacher_key(types.SimpleNamespace(**ckpt["config"]), ckpt["meta"], fields), teacher_key(cfg, meta, fields), path, fix)
    if cfg.init_from and ckpt.get("init_sha256") != init_sha256(folder or cfg.init_from):  # the same path, saved again in place
        raise DtrError(f"{cfg.init_from}'s weights or config have changed since {path} was imported from it; " +
                       (fix or f"delete {path} to import it again, or pass another --out_dir"))

def load_or_train(cfg, train_data, val_data, meta, device, bf16):
    """The teacher of this out_dir: teacher.pt if it exists (refused if made with other settings), else
    trained now (or imported, with --init_from). Returns (model, seconds its training took, seconds
    spent on it in this call)."""
    path, t0 = os.path.join(cfg.out_dir, "teacher.pt"), time.time()
    if not os.path.exists(path):
        if cfg.init_from:
            return import_teacher(cfg, val_data, meta, device, bf16, path), None, time.time() - t0
        model, train_s = train(cfg, train_data, val_data, meta, device, bf16, path)
        return model, train_s, time.time() - t0
    model, ckpt = load_model(path, device, "delete it to retrain the teacher")
    check_teacher(ckpt, cfg, meta, path)
    print(f"teacher  reusing {path} (val loss {ckpt['val_loss']:.4f})")
    return model, ckpt.get("train_s"), 0.0

def main(argv=None):
    def job(cfg):
        device, bf16 = choose_device(cfg.device)
        data = load_data(cfg)  # checked before the run folder is claimed: a refused run leaves it untouched
        with claim(cfg.out_dir):  # one run at a time in a folder
            load_or_train(cfg, *data, device, bf16)
    cli(job, lambda a: configure(TeacherConfig, a, __doc__, PRESETS), argv)

if __name__ == "__main__":
    main()
