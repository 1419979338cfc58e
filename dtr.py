"""
Distill-then-Replace (DtR, arXiv 2601.11667) in one file.

1. a pretrained full-attention GPT (the teacher, trained by train_teacher.py if missing),
2. blockwise local distillation (paper §3.1): every block gets a linear-attention twin,
   trained to reproduce the teacher block's output from the teacher block's input (MSE),
3. greedy replacement (paper Algorithm 1): swap in, one at a time, the twin whose swap
   hurts validation loss least, all the way to the all-linear model; report M_best and M_opt.
4. target tasks (paper §4): with --task lm,copy the same students are searched once per task,
   each task keeping its own full-attention layers; every M_opt is then scored on every task.

    python dtr.py --dataset shakespeare_char
    torchrun --standalone --nproc_per_node=2 dtr.py --dataset shakespeare_char   # same result, 2 processes
"""
import argparse
import contextlib
import copy
import dataclasses
import glob
import hashlib
import itertools
import json
import math
import os
import platform
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.distributed as dist
import torch.nn.functional as F

from kernel import linear_attention, linear_attention_step

# ---- config ----

def opt(default, help):
    return dataclasses.field(default=default, metadata={"help": help})

@dataclass
class Config:
    # data
    dataset: str = opt("shakespeare_char", "shakespeare (GPT-2 BPE), shakespeare_char, or path/to/any.txt")
    tokenizer: str = opt("char", "char | gpt2: how to tokenize your own text file")
    data_dir: str = opt("data", "where datasets are downloaded and their encoded splits cached")
    out_dir: str = opt("", "default out/<dataset>-<preset>; teacher.pt there, the run in <out_dir>/<student>/")
    preset: str = opt("", "tiny | cpu | gpu: model and schedule sizes (default: gpu on CUDA, else cpu)")
    device: str = opt("auto", "auto | cpu | cuda | mps")
    seed: int = opt(1337, "random seed")
    # teacher model (nanoGPT)
    n_layer: int = opt(6, "transformer blocks")
    n_head: int = opt(4, "attention heads per block")
    n_embd: int = opt(128, "model width")
    block_size: int = opt(128, "context length in tokens")
    dropout: float = opt(0.0, "dropout while training the teacher")
    # teacher training (train_teacher.py)
    batch_size: int = opt(16, "sequences per teacher training step (and per validation batch)")
    grad_accum: int = opt(1, "micro-batches per teacher step and process: batch_size is split over grad_accum x processes")
    max_iters: int = opt(2000, "teacher training steps")
    lr: float = opt(2e-3, "teacher peak learning rate")
    min_lr: float = opt(2e-4, "teacher learning rate at the end of the cosine")
    warmup_iters: int = opt(100, "teacher linear warmup steps")
    weight_decay: float = opt(0.1, "AdamW weight decay")
    grad_clip: float = opt(1.0, "clip gradients to this norm")
    eval_interval: int = opt(250, "evaluate the teacher every this many steps")
    copy_frac: float = opt(0.0, "fraction of teacher training sequences whose second half repeats the first "
                                "(teaches copying from context, which the copy task then measures)")
    save_interval: int = opt(250, "write a resumable checkpoint every this many teacher or distillation steps")
    # blockwise local distillation
    student: str = opt("gla", "gla (gated) | hedgehog (plain): the linear-attention twin")
    distill_iters: int = opt(400, "distillation steps (all blocks train together)")
    distill_lr: float = opt(2e-3, "distillation peak learning rate")
    distill_batch_size: int = opt(8, "sequences per distillation step")
    # greedy replacement
    val_batches: int = opt(8, "fixed validation batches used for every loss comparison")
    tolerance: float = opt(0.02, "M_opt keeps val loss <= (1 + tolerance) x the teacher's, in [0, 1)")
    task: str = opt("lm", "comma-separated target tasks, one greedy search each: lm (next token) | copy (recall a repeated passage)")
    task_text: str = opt("", "path to your own validation text: one more target task, scored as next-token loss")
    # after the run
    sample_tokens: int = opt(200, "tokens to generate from the teacher and M_opt at the end")
    sample: str = opt("", "path to a checkpoint (teacher.pt, m_opt.pt, ...): generate from it and exit")
    readme: str = opt("", "comma-separated report.json paths: regenerate README.md's results and pictures, exit")
    # evaluation (paper Fig. 2, 4 and §4.2)
    baselines: bool = opt(False, "also score uniform, one-shot importance and random placements at every k")
    finetune_iters: int = opt(0, "after replacement, finetune M_opt and (for fairness) the teacher this many steps")
    bench_decode: str = opt("", "comma-separated contexts, e.g. 512,2048,8192: time prefill and decoding "
                                "of teacher / M_opt / all-linear (needs this run's report.json), write decode_bench.json, exit")

PRESETS = {
    # the whole pipeline in seconds: for smoke tests and for watching every phase go by
    "tiny": dict(n_layer=4, n_head=2, n_embd=48, block_size=64, batch_size=8, max_iters=200, eval_interval=50,
                 save_interval=10, warmup_iters=10, distill_iters=50, val_batches=2, sample_tokens=60),
    # a few minutes on a laptop CPU
    "cpu": dict(),
    # nanoGPT's baby GPT
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2, batch_size=64,
                max_iters=5000, lr=1e-3, min_lr=1e-4, eval_interval=500, save_interval=500, distill_iters=1000,
                distill_batch_size=64, distill_lr=1e-3, val_batches=16),
}

# On a CPU the GPT-2 vocabulary (11,706 rows after remapping) costs more per step than the
# whole 6-layer trunk, so BPE runs take fewer, smaller steps to stay within minutes.
BPE_OVERRIDES = {"cpu": dict(batch_size=8, max_iters=1200)}

class DtrError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""

def atomic_save(obj, path):
    """Write to a temp file, then rename: a killed run never leaves a half-written file. Only rank 0
    writes; a temp file left by SIGKILL is overwritten by the rerun's same save (or by discard)."""
    if rank() > 0:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    try:
        if path.endswith(".json"):
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=2)
        else:
            torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C or a full disk mid-write: leave neither a temp nor a half file
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

def discard(path):
    """A finished phase's resumable checkpoint goes, with any temp file a killed write of it left."""
    for p in (path, path + ".tmp"):
        if rank() == 0 and os.path.exists(p):
            os.remove(p)

def check_resumable(saved, want, path):
    """Refuse to resume from a checkpoint written with other settings, naming the first that differs."""
    for key, value in want.items():
        if saved.get(key) != value:
            raise DtrError(f"{path} was written with {key}={saved.get(key)} but this run has {key}={value}; "
                           f"rerun with the settings it was written with, or delete it to start this phase over")

def choose_device(name):
    """The one place device and dtype are chosen: cuda -> mps -> cpu, bf16 autocast on CUDA."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        reason = "auto-detected"
    else:
        reason = "asked for"
    if name == "cuda" and not torch.cuda.is_available():
        raise DtrError("--device cuda, but PyTorch sees no CUDA GPU; use --device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DtrError("--device mps, but MPS is not available; use --device cpu (or auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise DtrError(f"unknown --device {name!r}; use auto, cpu, cuda or mps")
    bf16 = name == "cuda" and torch.cuda.is_bf16_supported()
    dist_init(name)
    print(f"device {name} ({reason}){', bf16 autocast' if bf16 else ', fp32'}"
          f"{f', {world()} processes (torchrun)' if world() > 1 else ''}")
    return name, bf16

def autocast(device, bf16):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

# ---- distributed: torchrun starts one process per device; in a single process these are no-ops ----

def dist_init(device):
    """Join the process group when launched by torchrun (it sets RANK, LOCAL_RANK, WORLD_SIZE)."""
    if "RANK" not in os.environ or dist.is_initialized():
        return
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" now means this process's GPU
    if rank() > 0:
        sys.stdout = open(os.devnull, "w")  # one log, written by rank 0; errors still reach stderr

def rank():
    return dist.get_rank() if dist.is_initialized() else 0

def world():
    return dist.get_world_size() if dist.is_initialized() else 1

def all_gather(obj):
    """Every process's obj (any picklable), in rank order; [obj] in a single process."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out

def barrier():
    if world() > 1:
        dist.barrier()

# ---- data ----

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
BUILTIN = {"shakespeare": "gpt2", "shakespeare_char": "char"}  # dataset -> tokenizer

def gpt2_encoding():
    import tiktoken  # only needed for BPE datasets
    try:
        return tiktoken.get_encoding("r50k_base")  # the same 50,257-token vocabulary as "gpt2"
    except Exception as e:
        raise DtrError(f"could not load GPT-2's BPE through tiktoken ({e}); connect to the internet "
                       f"once, or set TIKTOKEN_CACHE_DIR to a folder that holds its cache") from None

def encode(text, meta):
    """Text -> list of ids in our compact vocabulary."""
    if meta["tokenizer"] == "char":
        stoi = {c: i for i, c in enumerate(meta["vocab"])}
        return [stoi[c] for c in text]
    remap = {t: i for i, t in enumerate(meta["vocab"])}  # GPT-2 id -> compact id
    return [remap[t] for t in gpt2_encoding().encode_ordinary(text)]

def decode(ids, meta):
    if meta["tokenizer"] == "char":
        return "".join(meta["vocab"][i] for i in ids)
    return gpt2_encoding().decode([meta["vocab"][i] for i in ids])

def load_data(cfg):
    """Returns (train, val, meta): int64 token tensors and the tokenizer's meta. The split is
    nanoGPT's: first 90% of the characters train, last 10% validate. Encoded splits are cached."""
    if cfg.dataset in BUILTIN:
        name, tokenizer = cfg.dataset, BUILTIN[cfg.dataset]
        src = os.path.join(cfg.data_dir, name, "input.txt")
        if not os.path.exists(src):
            download(SHAKESPEARE_URL, src)
    elif os.path.isfile(cfg.dataset):
        if cfg.tokenizer not in ("char", "gpt2"):
            raise DtrError(f"unknown --tokenizer {cfg.tokenizer!r}; use char or gpt2")
        src, tokenizer = cfg.dataset, cfg.tokenizer
        name = os.path.splitext(os.path.basename(src))[0] + "-" + tokenizer
    else:
        raise DtrError(f"--dataset {cfg.dataset!r} is neither a built-in dataset "
                       f"({', '.join(BUILTIN)}) nor a readable text file")
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DtrError(f"cannot read {src} as UTF-8 text ({e}); pass a readable UTF-8 file") from None
    folder = os.path.join(cfg.data_dir, name)
    sha = hashlib.sha256(text.encode()).hexdigest()
    meta_path = os.path.join(folder, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("source_sha256") == sha and meta.get("tokenizer") == tokenizer:
            train, val = (np.fromfile(os.path.join(folder, s + ".bin"), dtype=np.uint16) for s in ("train", "val"))
            return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64)), meta
    n = int(0.9 * len(text))
    if tokenizer == "char":
        vocab = sorted(set(text))
    else:  # keep only the GPT-2 ids that occur: 11,706 rows instead of 50,257 for Shakespeare
        vocab = sorted(set(gpt2_encoding().encode_ordinary(text)))
    if len(vocab) > 65535:
        raise DtrError(f"{src} has {len(vocab)} distinct tokens, more than the 65,535 we store; use --tokenizer gpt2")
    meta = {"dataset": name, "tokenizer": tokenizer, "vocab": vocab, "source_sha256": sha}
    train, val = (np.array(encode(part, meta), dtype=np.uint16) for part in (text[:n], text[n:]))
    os.makedirs(folder, exist_ok=True)
    for split, arr in (("train", train), ("val", val)):
        if rank() == 0:  # the other processes encoded the same tokens; they must not write over them
            arr.tofile(os.path.join(folder, split + ".bin"))
    atomic_save(meta, meta_path)  # written last: it marks the cache complete
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(val.astype(np.int64)), meta

def download(url, path):
    print(f"downloading {url} -> {path}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
    except OSError as e:
        raise DtrError(f"could not download tiny Shakespeare ({e}); put the file from {url} "
                       f"at {path} by hand and rerun") from None
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)

def windows(data, starts, block_size, device):
    """x = the windows of block_size tokens at `starts`, y = the next token at each place, both (B, T)."""
    x = torch.stack([data[i:i + block_size] for i in starts])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in starts])
    return x.to(device), y.to(device)

def get_batch(data, block_size, batch_size, device, generator=None):
    """Random windows for training."""
    return windows(data, torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator), block_size, device)

def fixed_batches(data, block_size, batch_size, n_batches, device):
    """Deterministic windows spread evenly over the split: every candidate in the greedy
    search sees exactly the same tokens, so loss differences are real, not sampling noise."""
    if len(data) < block_size + 2:
        raise DtrError(f"the validation split has {len(data)} tokens, fewer than the context "
                       f"({block_size}) + 2; use a longer text or a smaller --block_size")
    starts = torch.linspace(0, len(data) - block_size - 1, n_batches * batch_size).long()
    return [windows(data, s, block_size, device) for s in starts.split(batch_size)]

# ---- model: the teacher (nanoGPT) ----

@dataclass
class GPTConfig:
    block_size: int = 128
    vocab_size: int = 65
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0

class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)  # q, k, v for all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = config.dropout

    def new_cache(self, batch_size, max_len):
        """KV cache for generation: keys and values of every token seen, so it grows with context."""
        hs = self.c_attn.in_features // self.n_head
        kv = self.c_proj.weight.new_zeros(batch_size, self.n_head, max_len, hs)
        return {"k": kv, "v": kv.clone(), "n": 0}

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        else:  # append to the cache, then attend over everything seen so far
            n = cache["n"]
            cache["k"][:, :, n:n + T], cache["v"][:, :, n:n + T] = k, v
            cache["n"] = n + T
            # query i sees keys <= n + i: a plain causal mask for a prompt into an empty cache,
            # none at all for a single new token, else the causal mask shifted by n
            k, v = cache["k"][:, :, :n + T], cache["v"][:, :, :n + T]
            if n == 0 or T == 1:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=n == 0)
            else:
                mask = torch.ones(T, n + T, dtype=torch.bool, device=x.device).tril(diagonal=n)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return F.dropout(self.c_proj(y), self.dropout, self.training)

class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))

class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, attn=None, cache=None):
        # attn: run this block with another attention module in place of its own; distillation
        # uses it to train a student inside the teacher's frozen LayerNorms and MLP
        x = x + (attn or self.attn)(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        if start + T > self.config.block_size:
            raise DtrError(f"position {start + T} is past the context of {self.config.block_size} tokens")
        pos = torch.arange(start, start + T, device=idx.device)
        return self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)

    def head(self, x, targets=None):
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab)
        # targets of -1 are not scored: the copy task masks the first copy of each passage
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-1)
        return logits, loss

    def forward(self, idx, targets=None, caches=None):
        """caches: None, or new_caches()'s list, carried from call to call while generating:
        the first call prefills the prompt, each later call feeds only the newest tokens."""
        x = self.embed(idx, caches[0]["pos"] if caches else 0)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache=caches[i] if caches else None)
        if caches:
            caches[0]["pos"] += idx.size(1)
        return self.head(x, targets)

    def new_caches(self, batch_size, max_len):
        """One cache per layer, of that layer's kind: a KV cache for full attention, the fixed-size
        state for linear attention. caches[0]["pos"] counts the tokens fed so far."""
        caches = [block.attn.new_cache(batch_size, max_len) for block in self.transformer.h]
        caches[0]["pos"] = 0
        return caches

    def linear_layers(self):
        return [i for i, b in enumerate(self.transformer.h) if isinstance(b.attn, LinearAttention)]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=0.8, top_k=40, generator=None):
        """Sample with per-layer caches: one prefill, then one token per call. When the context
        is full, start over from the last half of it (a sliding window, refreshed in jumps)."""
        window = self.config.block_size
        caches, logits = None, None
        for _ in range(max_new_tokens):
            if caches is None or caches[0]["pos"] == window:
                context = idx[:, -(window // 2 if caches else window):]
                caches = self.new_caches(idx.size(0), window)
                logits, _ = self(context, caches=caches)
            logits = logits[:, -1, :].float() / temperature
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
            if caches[0]["pos"] < window:
                logits, _ = self(idx_next, caches=caches)
        return idx

# ---- model: the linear-attention students ----

class LinearAttention(nn.Module):
    """Drop-in student for CausalSelfAttention (same forward(x)). q/k/v/o start as copies of
    the teacher's; softmax(q.k) is replaced by phi(q).phi(k) with a learned Hedgehog feature map
    phi(x) = softmax([xW, -xW]) (per head, W initialised to the identity). gated=True adds a
    data-dependent per-head decay g_t in (0, 1] (our compact GLA), initialised close to 1."""

    def __init__(self, teacher_attn, gated):
        super().__init__()
        self.n_head = teacher_attn.n_head
        self.c_attn = copy.deepcopy(teacher_attn.c_attn)
        self.c_proj = copy.deepcopy(teacher_attn.c_proj)
        C = self.c_attn.in_features
        hs = C // self.n_head
        eye = torch.eye(hs).repeat(self.n_head, 1, 1)  # (nh, hs, hs)
        self.fmap_q = nn.Parameter(eye.clone())
        self.fmap_k = nn.Parameter(eye.clone())
        self.gate = None
        if gated:
            self.gate = nn.Linear(C, self.n_head)  # log g_t = logsigmoid(x W + b) / 16, as in GLA
            nn.init.zeros_(self.gate.weight)
            nn.init.constant_(self.gate.bias, 4.0)  # g ~ 0.999: long memory, close to the plain variant

    def feature_map(self, x, w):
        x = x @ w  # (B, nh, T, hs) @ (nh, hs, hs): each head its own map
        return torch.cat([x, -x], dim=-1).softmax(dim=-1)  # (B, nh, T, 2 hs), non-negative

    def new_cache(self, batch_size, max_len):
        """The recurrent state (with the normaliser as its last column): fixed size, whatever the context."""
        hs = self.c_attn.in_features // self.n_head
        return {"state": torch.zeros(batch_size, self.n_head, 2 * hs, hs + 1, device=self.c_proj.weight.device)}

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        q, k = self.feature_map(q, self.fmap_q), self.feature_map(k, self.fmap_k)  # (B, nh, T, 2 hs)
        log_g = None
        if self.gate is not None:
            log_g = (F.logsigmoid(self.gate(x).float()) / 16).transpose(1, 2)  # (B, nh, T)
        if cache is None:
            y = linear_attention(q, k, v, log_g)  # (B, nh, T, hs)
        elif T == 1:  # decoding: the recurrent step, constant work per token
            y, cache["state"] = linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0],
                                                      None if log_g is None else log_g[..., 0], cache["state"])
            y = y[:, :, None].to(q.dtype)
        else:  # prefill: the chunked form, starting from and handing back the state
            y, cache["state"] = linear_attention(q, k, v, log_g, initial_state=cache["state"], output_final_state=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)

def make_students(model, gated):
    return [LinearAttention(block.attn, gated) for block in model.transformer.h]

def swap_in(model, layers, students):
    """The hybrid: the listed layers' attention replaced by their students (setattr, no copies)."""
    for i in layers:
        model.transformer.h[i].attn = students[i]
    return model

@contextlib.contextmanager
def hybrid(model, layers, students):
    """swap_in for the duration of a `with` block, then every layer's own attention back."""
    own = [block.attn for block in model.transformer.h]
    try:
        yield swap_in(model, layers, students)
    finally:
        for block, attn in zip(model.transformer.h, own):
            block.attn = attn

# ---- blockwise local distillation (paper §3.1) ----

@torch.no_grad()
def block_io(model, idx):
    """One teacher forward: the input and output of every block, lists of (B, T, C)."""
    x = model.embed(idx)
    inputs, outputs = [], []
    for block in model.transformer.h:
        inputs.append(x)
        x = block(x)
        outputs.append(x)
    return inputs, outputs

def block_mse(model, students, batches, device, bf16):
    """Per layer: MSE of the student block against the teacher block, and that MSE relative to
    the variance of the teacher block's residual update (comparable across layers)."""
    L = len(students)
    mse, var = torch.zeros(L), torch.zeros(L)
    with torch.no_grad(), autocast(device, bf16):
        for x, _ in batches:
            inputs, outputs = block_io(model, x)
            for i, (block, s) in enumerate(zip(model.transformer.h, students)):
                mse[i] += F.mse_loss(block(inputs[i], attn=s).float(), outputs[i].float()).item()
                var[i] += (outputs[i] - inputs[i]).float().var().item()
    return (mse / len(batches)).tolist(), (mse / var).tolist()

def distill_blocks(model, students, train, cfg, device, bf16, ckpt_path=None, key=None):
    """Train every student at once. Each student sees the teacher's own hidden state entering its
    block and must reproduce the teacher block's output; the block's LayerNorms and MLP stay
    frozen, so only the student's attention parameters learn. Blocks are independent: the sum of
    per-block losses gives each student exactly its own block's gradient. With its own optimizer
    and clipping too, a student is the same however torchrun splits the blocks over processes.
    ckpt_path: resume from it if it exists (it must carry `key`); rewritten every save_interval."""
    model.eval().requires_grad_(False)
    blocks = model.transformer.h
    if world() > len(blocks):
        raise DtrError(f"{world()} processes for {len(blocks)} blocks; start at most {len(blocks)} with torchrun")
    mine = range(rank(), len(blocks), world())  # ---- distributed: this process's share of the blocks
    for s in students:
        s.train().requires_grad_(True)
    optimizers = {i: torch.optim.AdamW(students[i].parameters(), lr=cfg.distill_lr, weight_decay=0.0) for i in mine}
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # identical on every process: the same batches
    start = 0
    if ckpt_path and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device)
        check_resumable(ckpt["key"], key, ckpt_path)
        for i in mine:
            students[i].load_state_dict(ckpt["students"][i])
            optimizers[i].load_state_dict(ckpt["optimizers"][i])
        gen.set_state(ckpt["gen"])
        start = ckpt["step"]
        print(f"distill  resuming {ckpt_path} at step {start}/{cfg.distill_iters}")
    t0 = time.time()
    for it in range(start, cfg.distill_iters):
        lr = cfg.distill_lr * 0.5 * (1 + math.cos(math.pi * it / cfg.distill_iters))  # cosine to 0
        x, _ = get_batch(train, cfg.block_size, cfg.distill_batch_size, device, gen)
        with autocast(device, bf16):
            inputs, outputs = block_io(model, x)  # no grad: the teacher is a fixed target
            losses = {i: F.mse_loss(blocks[i](inputs[i], attn=students[i]).float(), outputs[i].float()) for i in mine}
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise DtrError(f"distillation diverged (loss {loss.item()}) at step {it}; "
                           f"lower --distill_lr (now {cfg.distill_lr})")
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for i, optimizer in optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = lr
            torch.nn.utils.clip_grad_norm_(students[i].parameters(), 1.0)
            optimizer.step()
        if ckpt_path and (it + 1) % cfg.save_interval == 0 and it + 1 < cfg.distill_iters:
            # every process sends its students and their optimizer states; rank 0 writes them all
            state = {i: s for part in all_gather({i: (students[i].state_dict(), optimizers[i].state_dict())
                                                  for i in mine}) for i, s in part.items()}
            atomic_save({"key": key, "step": it + 1, "gen": gen.get_state(),
                         "students": [state[i][0] for i in range(len(blocks))],
                         "optimizers": [state[i][1] for i in range(len(blocks))]}, ckpt_path)
        if it % 100 == 0 or it == cfg.distill_iters - 1:
            mse = dict(sorted(kv for part in all_gather({i: l.item() for i, l in losses.items()}) for kv in part.items()))
            dt = time.time() - t0
            eta = dt / (it + 1 - start) * (cfg.distill_iters - it - 1)
            per_layer = " ".join(f"L{i} {l:.4f}" for i, l in mse.items())
            print(f"distill  step {it + 1}/{cfg.distill_iters} | mse {per_layer} | "
                  f"{1000 * dt / (it + 1 - start):.0f} ms/step | eta {fmt_time(eta)}")
    for part in all_gather({i: students[i].state_dict() for i in mine}):  # every process gets every student
        for i, sd in part.items():
            students[i].load_state_dict(sd)
    for s in students:
        s.eval().requires_grad_(False)
    return students

def fmt_time(seconds):
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"

# ---- greedy replacement (paper Algorithm 1) ----

@torch.no_grad()
def val_loss(model, batches, device="cpu", bf16=False):
    """Mean next-token loss over fixed batches."""
    with autocast(device, bf16):
        return sum(model(x, y)[1].item() for x, y in batches) / len(batches)

@torch.no_grad()
def greedy_replace(model, students, batches, device="cpu", bf16=False, ckpt_path=None, key=None):
    """Algorithm 1: starting from the teacher, each round tries every still-full layer swapped
    for its student and commits the swap with the lowest validation loss, until every layer is
    linear. Returns the teacher's loss and the trajectory [{"k", "layer", "val_loss", "rel_change",
    "candidates"}, ...] (candidates: every layer's loss that round, None where already linear),
    and leaves `model` as the teacher it was given. ckpt_path: a JSON file of the rounds done so far
    (it must carry `key`): the search continues after them and rewrites it after every round."""
    model.eval()
    blocks = model.transformer.h
    teacher_loss = val_loss(model, batches, device, bf16)
    linear, trajectory = [], []
    if ckpt_path and os.path.exists(ckpt_path):
        with open(ckpt_path) as f:
            saved = json.load(f)
        check_resumable(saved["key"], key, ckpt_path)
        trajectory = saved["trajectory"]
        linear = [t["layer"] for t in trajectory]
        print(f"greedy   resuming {ckpt_path} after round {len(trajectory)}/{len(blocks)}")
    with hybrid(model, linear, students):  # the teacher comes back when the search ends
        for k in range(len(trajectory) + 1, len(blocks) + 1):
            losses = greedy_round(model, students, batches, linear, device, bf16)
            best = min(losses, key=losses.get)  # ties go to the lower layer index
            linear.append(best)
            swap_in(model, [best], students)
            trajectory.append({"k": k, "layer": best, "val_loss": losses[best],
                               "rel_change": losses[best] / teacher_loss - 1,
                               "candidates": [losses.get(i) for i in range(len(blocks))]})  # None: already linear
            print(f"greedy   round {k}/{len(blocks)} | " +
                  " ".join(f"L{i} {l:.4f}" for i, l in losses.items()) +
                  f" | replace L{best} -> {losses[best]:.4f} ({100 * trajectory[-1]['rel_change']:+.2f}%)")
            if ckpt_path:
                atomic_save({"key": key, "trajectory": trajectory}, ckpt_path)
    return teacher_loss, trajectory

@torch.no_grad()
def greedy_round(model, students, batches, linear, device, bf16):
    """One round of Algorithm 1: {layer: val loss of the current hybrid with that layer swapped}."""
    blocks = model.transformer.h
    # the current hybrid is shared by every candidate up to the layer it swaps: run it once
    # and cache every layer's input, so a candidate only recomputes from its own layer on
    with autocast(device, bf16):
        cached = [block_io(model, x)[0] for x, _ in batches]  # [batch][layer] -> (B, T, C)
        losses = {}
        candidates = [i for i in range(len(blocks)) if i not in linear]
        for i in candidates[rank()::world()]:  # ---- distributed: each process scores its share
            total = 0.0
            for (_, y), inputs in zip(batches, cached):
                h = blocks[i](inputs[i], attn=students[i])
                for block in blocks[i + 1:]:
                    h = block(h)
                total += model.head(h, y)[1].item()
            losses[i] = total / len(batches)
    return dict(sorted(kv for part in all_gather(losses) for kv in part.items()))  # the same on every process

def select_models(teacher_loss, trajectory, tolerance):
    """M_best: the lowest val loss seen (the teacher counts; ties go to more linear layers).
    M_opt: the most linear layers whose val loss stays within `tolerance` of the teacher's."""
    points = [(0, teacher_loss)] + [(t["k"], t["val_loss"]) for t in trajectory]
    order = [t["layer"] for t in trajectory]
    k_best = min(points, key=lambda p: (p[1], -p[0]))[0]
    k_opt = max(k for k, loss in points if loss <= (1 + tolerance) * teacher_loss)
    pick = lambda k: {"linear_layers": sorted(order[:k]), "val_loss": points[k][1]}
    return pick(k_best), pick(k_opt)

# ---- evaluation: placement baselines (paper Fig. 4) and decoding speed (Fig. 2, Table 2) ----

@torch.no_grad()
def placement_baselines(model, students, batches, trajectory, n_random=5, seed=0, device="cpu", bf16=False):
    """Val loss at every k = 1..L for the obvious alternatives to greedy, with the same students
    on the same batches: k evenly spaced layers; one-shot importance (replace in the order of
    each layer's loss when swapped alone, i.e. greedy's first round); random orders."""
    L = len(students)
    uniform = [sorted({int((i + 0.5) * L / k) for i in range(k)}) for k in range(1, L + 1)]
    importance = sorted(range(L), key=lambda i: trajectory[0]["candidates"][i])  # greedy's first round
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(L, generator=gen).tolist() for _ in range(n_random)]

    def loss_of(layers):
        with hybrid(model, layers, students):
            return val_loss(model, batches, device, bf16)

    random_losses = torch.tensor([[loss_of(order[:k]) for k in range(1, L + 1)] for order in orders])
    return {"greedy": [t["val_loss"] for t in trajectory],
            "uniform": [loss_of(layers) for layers in uniform],
            "importance": [loss_of(importance[:k]) for k in range(1, L + 1)],
            "random_mean": random_losses.mean(0).tolist(),
            "random_std": random_losses.std(0).tolist(),
            "uniform_layers": uniform, "importance_order": importance, "random_orders": orders}

def print_baselines(b):
    """Each curve's mean val loss over k (the area under it, per layer), and where greedy loses."""
    L = len(b["greedy"])
    for name in ("greedy", "uniform", "importance", "random_mean"):
        print(f"baseline {name:11s} " + " ".join(f"{x:.4f}" for x in b[name]) + f" | area {sum(b[name]) / L:.4f}")
    print("baseline " + greedy_verdict(b))

def greedy_verdict(b):
    # at or below, up to float noise: greedy's cached evaluation and a plain forward differ by ~1e-7
    worse = [k + 1 for k in range(len(b["greedy"]))
             if any(b["greedy"][k] > b[n][k] * (1 + 1e-6) for n in ("uniform", "importance", "random_mean"))]
    return ("greedy is at or below every baseline at every k" if not worse else
            f"greedy is above some baseline at k = {worse}")

def finetune(model, layers, students, train, val_b, cfg, device, bf16):
    """Train a copy of the model with `layers` linear, end to end (all parameters), at a small
    learning rate; val loss before and after. The run's own model is left untouched."""
    with hybrid(model, layers, students):
        tuned = copy.deepcopy(model).train().requires_grad_(True)
    before = val_loss(tuned.eval(), val_b, device, bf16)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=cfg.min_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # the same batches for teacher and hybrid
    for _ in range(cfg.finetune_iters):
        x, y = get_batch(train, cfg.block_size, cfg.batch_size, device, gen)
        with autocast(device, bf16):
            _, loss = tuned.train()(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), cfg.grad_clip)
        optimizer.step()
    return {"before": before, "after": val_loss(tuned.eval(), val_b, device, bf16)}

def cache_bytes(caches):
    return sum(t.numel() * t.element_size() for c in caches for t in c.values() if torch.is_tensor(t))

@torch.inference_mode()
def bench_decode(cfg, device, patterns, contexts, new_tokens=32, repeats=5, batch=8):
    """Prefill N tokens, then decode new_tokens one at a time, for each layer pattern, side by
    side; decoding is timed for one sequence and for `batch` sequences at once (the prefilled
    cache copied to each), which shares each token's fixed cost over the batch. Each decoding
    is timed twice: eager, and through torch.compile, which removes most of PyTorch's per-op
    overhead (at this size ~300 small ops per token, the same in every model, that hide what
    attention itself costs). Random weights of the run's model size: weights do
    not change speed; the position table is stretched to the longest context just for timing."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(block_size=max(contexts) + new_tokens, vocab_size=65, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, n_embd=cfg.n_embd)).to(device).eval()
    students = [s.to(device) for s in make_students(model, cfg.student == "gla")]
    models = {}
    for name, layers in patterns.items():  # one model per pattern, so each compiles on its own
        with hybrid(model, layers, students):
            models[name] = copy.deepcopy(model)
    steps = {name: {"eager": m, "compiled": compiled_decoder(m, batch, device)} for name, m in models.items()}
    modes = ["eager"] + (["compiled"] if all(s["compiled"] is not None for s in steps.values()) else [])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    rows = []
    for N in contexts:
        idx = torch.randint(65, (batch, N + new_tokens), device=device)
        prefill, held = {name: [] for name in patterns}, {}
        decode = {(name, B, mode): [] for name in patterns for B in (1, batch) for mode in modes}
        for _ in range(repeats):
            for name, m in models.items():  # models take turns, so noise hits them alike
                caches = m.new_caches(1, N + new_tokens)
                sync(); t0 = time.perf_counter()
                m(idx[:1, :N], caches=caches)
                sync(); prefill[name].append(time.perf_counter() - t0)
                held[name] = cache_bytes(caches)
                for B, mode in itertools.product((1, batch), modes):  # the same prefilled cache, for B sequences
                    c = [{k: v.expand(B, *v.shape[1:]).clone() if torch.is_tensor(v) else v
                          for k, v in layer.items()} for layer in caches]
                    for t in range(N, N + new_tokens):
                        t0 = time.perf_counter()
                        steps[name][mode](idx[:B, t:t + 1], caches=c)
                        sync(); decode[name, B, mode].append(time.perf_counter() - t0)
        for name in patterns:
            row = {"model": name, "context": N, "prefill_s": median(prefill[name]), "cache_bytes": held[name]}
            line = f"decode   {name:10s} context {N:6d} | prefill {row['prefill_s']:7.3f} s | cache {held[name] / 2**20:8.2f} MiB"
            for mode in modes:
                tail = "" if mode == "eager" else "_compiled"  # decode_tok_s, decode_tok_s_compiled, ...
                row["decode_tok_s" + tail] = 1 / median(decode[name, 1, mode])
                row[f"decode_tok_s_batch{batch}" + tail] = batch / median(decode[name, batch, mode])
                line += f" | {mode} {row['decode_tok_s' + tail]:7.1f} tok/s, batch {batch}: {row[f'decode_tok_s_batch{batch}' + tail]:7.1f}"
            rows.append(row)
            print(line)
    return {"device": device, "machine": machine(), "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
            "new_tokens": new_tokens, "repeats": repeats, "batch": batch, "compiled": "compiled" in modes, "rows": rows}

def compiled_decoder(model, batch, device, context=70):
    """torch.compile(model) for one-token decoding steps, compiled here for 1 and `batch`
    sequences (shapes dynamic, so every context reuses the graphs) and checked against the
    eager model's logits. None, with the reason printed, where compiling does not work."""
    step = torch.compile(model, dynamic=True)
    idx = torch.randint(65, (batch, context + 3), device=device)
    try:
        for B in (1, batch):
            eager, comp = model.new_caches(B, context + 3), model.new_caches(B, context + 3)
            model(idx[:B, :context], caches=eager)
            model(idx[:B, :context], caches=comp)
            for t in range(context, context + 3):
                want, _ = model(idx[:B, t:t + 1], caches=eager)
                got, _ = step(idx[:B, t:t + 1], caches=comp)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    except Exception as e:  # no C++ compiler, an unsupported platform, ...: time eager decoding only
        print(f"decode   compiled decoding skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None
    return step

# ---- tasks (paper §4, Fig. 3) ----
# Greedy replacement only needs fixed batches to score, so a target task is just its own
# batches: one teacher and one set of distilled students serve every task, and each task's
# search keeps the full-attention layers that task needs.

TASKS = ("lm", "copy")

def copy_batches(data, block_size, batch_size, n_batches, device):
    """In-context recall: each row is a held-out passage of block_size // 2 tokens shown twice.
    Only the second copy is scored (every other target is -1): from its second token on, each
    token can be read off the first copy, which softmax attention does with induction heads and
    a fixed-size linear-attention state can only approximate."""
    half = block_size // 2
    batches = []
    for p, nxt in fixed_batches(data, half, batch_size, n_batches, device):  # passages (B, half)
        x = torch.cat([p, p], dim=1)  # (B, 2 half)
        y = torch.full_like(x, -1)
        y[:, half:-1] = nxt[:, :-1]  # p[1:]; the first token of the second copy has no cue yet
        batches.append((x, y))
    return batches

def repeat_first_half(x, y, n):
    """The first n rows of a training batch (x, y: (B, T)) become their first half shown twice,
    with the targets of that sequence: the copy task's pattern, for a teacher to learn from."""
    T, half = x.size(1), x.size(1) // 2
    x2, y2 = x.clone(), y.clone()
    x2[:n, half:] = x[:n, :T - half]
    y2[:n, half - 1] = x[:n, 0]  # the last token of the first copy is followed by the first of the second
    y2[:n, half:] = y[:n, :T - half]
    return x2, y2

def text_batches(path, meta, cfg, device):
    """The user's own validation text through the teacher's tokenizer, as next-token batches."""
    try:
        with open(path, encoding="utf-8") as f:
            ids = encode(f.read(), meta)
    except (OSError, UnicodeDecodeError) as e:
        raise DtrError(f"cannot read --task_text {path} as UTF-8 text ({e})") from None
    except KeyError as e:  # a character (or GPT-2 token) the teacher never saw has no embedding
        raise DtrError(f"--task_text {path} contains {e.args[0]!r}, which is not in the teacher's "
                       f"{meta['tokenizer']} vocabulary; remove it or train on data that has it") from None
    if len(ids) < cfg.block_size + 2:
        raise DtrError(f"--task_text {path} has {len(ids)} tokens, fewer than the context "
                       f"({cfg.block_size}) + 2; use a longer text")
    return fixed_batches(torch.tensor(ids), cfg.block_size, cfg.batch_size, cfg.val_batches, device)

def task_batches(cfg, val, val_b, meta, device):
    """{task name: fixed batches} for --task and --task_text, built (and checked) before training."""
    names = [n.strip() for n in cfg.task.split(",")]
    if any(n not in TASKS for n in names):
        raise DtrError(f"unknown --task {cfg.task!r}; use a comma-separated list of {', '.join(TASKS)}")
    tasks = {n: val_b if n == "lm" else copy_batches(val, cfg.block_size, cfg.batch_size, cfg.val_batches, device)
             for n in names}
    if cfg.task_text:
        tasks[os.path.basename(cfg.task_text)] = text_batches(cfg.task_text, meta, cfg, device)
    return tasks

def run_tasks(model, students, tasks, cfg, run_dir, device="cpu", bf16=False, done=None):
    """Per task: greedy replacement on its batches (or its result from `done`, {name: (teacher_loss,
    trajectory)}), M_best and M_opt; then every task's M_opt scored on every task. Returns the
    report's "tasks" and "tasks_cross_eval", or nothing for the plain single-task run."""
    if list(tasks) == ["lm"]:
        return {}
    t0, results = time.time(), {}
    for name, batches in tasks.items():
        print(f"\n---- task {name} ----")
        teacher_loss, trajectory = (done or {}).get(name) or greedy_replace(model, students, batches, device, bf16)
        m_best, m_opt = select_models(teacher_loss, trajectory, cfg.tolerance)
        print_trajectory(teacher_loss, trajectory, m_best, m_opt, cfg.tolerance)
        results[name] = {"teacher_loss": teacher_loss, "trajectory": trajectory, "m_best": m_best, "m_opt": m_opt}
    if "copy" in tasks:  # the same passages and targets without the repeat: what the first copy is worth
        half = tasks["copy"][0][0].size(1) // 2
        plain = [(x[:, :half], y[:, half:]) for x, y in tasks["copy"]]  # (B, half) each
        results["copy"]["teacher_plain_loss"] = val_loss(model, plain, device, bf16)
    names, n_layer, loss = list(tasks), len(students), []
    for row in names:  # is a hybrid chosen for one task still good at the others?
        with hybrid(model, results[row]["m_opt"]["linear_layers"], students):
            loss.append([val_loss(model, tasks[col], device, bf16) for col in names])
    out = {"tasks": results, "tasks_cross_eval": {"rows": names, "cols": names, "loss": loss}}
    print("\n" + "\n".join(tasks_markdown(out, cfg.tolerance, n_layer)))
    plot_tasks(results, cfg.tolerance, n_layer, os.path.join(run_dir, "tasks.png"))
    print(f"tasks    {len(names)} searches and cross-evaluation in {time.time() - t0:.0f}s")
    return out

def tasks_markdown(report, tolerance, n_layer):
    """The per-task tables in markdown: printed by the run, and written into the README."""
    tasks, cross = report["tasks"], report["tasks_cross_eval"]
    row = lambda *cells: "| " + " | ".join(cells) + " |"
    rule = row(*["---"] * (len(tasks) + 1))
    vs = lambda loss, name: f"{loss:.4f} ({100 * (loss / tasks[name]['teacher_loss'] - 1):+.1f}%)"
    out = [row(f"layer at M_opt (tolerance {tolerance:.0%}), k = greedy round it went linear", *tasks), rule]
    for i in range(n_layer):
        ks = [next(t["k"] for t in r["trajectory"] if t["layer"] == i) for r in tasks.values()]
        out.append(row(f"L{i}", *(("linear" if i in r["m_opt"]["linear_layers"] else "**full**") + f" (k={k})"
                                  for r, k in zip(tasks.values(), ks))))
    out += [row("val loss: teacher -> M_opt", *(f"{r['teacher_loss']:.4f} -> {vs(r['m_opt']['val_loss'], n)}"
                                                for n, r in tasks.items())), "",
            row("M_opt of (row), scored on (col)", *cross["cols"]), rule]
    out += [row(name, *map(vs, losses, cross["cols"])) for name, losses in zip(cross["rows"], cross["loss"])]
    if "copy" in tasks:
        c = tasks["copy"]
        out += ["", f"Teacher on the copy passages: {c['teacher_loss']:.4f} on the second copy, "
                    f"{c['teacher_plain_loss']:.4f} on the same tokens without the repeat"
                    + (" (it gains nothing from the repeat)." if c["teacher_loss"] >= c["teacher_plain_loss"] else ".")]
    return out

def plot_tasks(tasks, tolerance, n_layer, path):
    """tasks.png: each task's loss vs k relative to its teacher, and which layers stay full at M_opt."""
    plt = pyplot()
    if plt is None:
        return
    names = list(tasks)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    for name, r in tasks.items():
        ax1.plot([0] + [t["k"] for t in r["trajectory"]], [0] + [100 * t["rel_change"] for t in r["trajectory"]],
                 marker="o", label=name)
    ax1.plot([0, n_layer], [100 * tolerance] * 2, color="gray", ls="--", label=f"tolerance {tolerance:.0%}")
    ax1.set(xlabel="k = layers replaced (greedy order)", ylabel="val loss vs the task's teacher (%)")
    if max(t["rel_change"] for r in tasks.values() for t in r["trajectory"]) > 0.5:
        ax1.set_yscale("symlog", linthresh=5)  # a task whose loss explodes would flatten the others
    ax1.legend()
    full = [[i not in tasks[n]["m_opt"]["linear_layers"] for n in names] for i in range(n_layer)]  # (layer, task)
    ax2.imshow(full, cmap="Greys", vmin=0, vmax=1.6, aspect="auto")
    for i, row in enumerate(full):
        for j, f in enumerate(row):
            ax2.text(j, i, "full" if f else "linear", ha="center", va="center", color="white" if f else "black")
    ax2.set(xticks=range(len(names)), xticklabels=names, yticks=range(n_layer),
            yticklabels=[f"L{i}" for i in range(n_layer)], title=f"M_opt (tolerance {tolerance:.0%})")
    save_figure(fig, path)

def pyplot():
    """matplotlib, drawing to files only; None (with a note) where it is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # write files, never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots    matplotlib is not installed, so no pictures (pip install matplotlib)")
        return None
    return plt

def save_figure(fig, path):
    fig.tight_layout()
    fig.savefig(path + ".tmp", format="png", dpi=110)
    os.replace(path + ".tmp", path)
    pyplot().close(fig)
    return path

# ---- checkpoints, report and sampling ----

MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size")

def model_args(cfg, meta):
    return dict(vocab_size=len(meta["vocab"]), dropout=cfg.dropout, **{f: getattr(cfg, f) for f in MODEL_FIELDS})

def load_model(path, device):
    """Rebuild the model in a checkpoint: the teacher, or a hybrid with students at linear_layers."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        model = GPT(GPTConfig(**ckpt["model_args"]))
        gated = ckpt.get("student") == "gla"
        swap_in(model, ckpt.get("linear_layers", []), make_students(model, gated))
        model.load_state_dict(ckpt["state_dict"])
    except Exception as e:  # a truncated file, someone else's pickle, a different architecture
        raise DtrError(f"cannot load checkpoint {path} ({type(e).__name__}: {str(e)[:200]}); "
                       f"delete it to start over, or point to a checkpoint written by this project") from None
    return model.to(device).eval(), ckpt

def check_compatible(ckpt, cfg, meta, path):
    """Refuse a teacher trained with other model settings or on other data, naming the difference."""
    want = model_args(cfg, meta)
    for key in MODEL_FIELDS + ("vocab_size",):
        if ckpt["model_args"][key] != want[key]:
            raise DtrError(f"{path} was trained with {key}={ckpt['model_args'][key]} but this run has "
                           f"{key}={want[key]}; pass --{key} {ckpt['model_args'][key]}, another --out_dir, or delete it to retrain")
    if ckpt["config"].get("copy_frac", 0.0) != cfg.copy_frac:
        raise DtrError(f"{path} was trained with copy_frac={ckpt['config'].get('copy_frac', 0.0)} but this run has "
                       f"copy_frac={cfg.copy_frac}; use another --out_dir, or delete it to retrain")
    if ckpt["meta"]["source_sha256"] != meta["source_sha256"] or ckpt["meta"]["tokenizer"] != meta["tokenizer"]:
        raise DtrError(f"{path} was trained on other data ({ckpt['meta']['dataset']}, {ckpt['meta']['tokenizer']} "
                       f"tokenizer); use another --out_dir, or delete it to retrain")

def save_hybrid(path, model, students, linear_layers, cfg, meta, val):
    with hybrid(model, linear_layers, students):
        atomic_save({"model_args": model_args(cfg, meta), "state_dict": model.state_dict(),
                     "config": dataclasses.asdict(cfg), "meta": meta, "student": cfg.student,
                     "linear_layers": linear_layers, "val_loss": val}, path)

def sample_text(model, meta, n_tokens, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    start = torch.tensor([encode("\n", meta)], device=device)
    return decode(model.generate(start, n_tokens, generator=gen)[0].tolist(), meta)

def print_trajectory(teacher_loss, trajectory, m_best, m_opt, tolerance):
    print(f"\n  k | replaced | val loss | vs teacher\n  0 |        - | {teacher_loss:8.4f} |")
    for t in trajectory:
        print(f"{t['k']:3d} |       L{t['layer']} | {t['val_loss']:8.4f} | {100 * t['rel_change']:+7.2f}%")
    for name, m in (("M_best", m_best), (f"M_opt (tolerance {tolerance:.0%})", m_opt)):
        print(f"{name}: linear layers {m['linear_layers']}, val loss {m['val_loss']:.4f}")

def machine():
    """What produced the numbers, for the report and the README."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"

def results_markdown(reports, benches, pictures):
    """The README's results section, generated from report.json files (never typed by hand)."""
    out = []
    for r in reports:
        c, t = r["config"], r["timings_s"]
        out += [f"#### {run_label(r)} (preset `{c['preset']}`)", "",
                f"`{r['command']}` on {r['machine']}, {r['date']}: teacher {t['teacher']:.0f} s, "
                f"distillation {t['distill']:.0f} s, greedy {t['greedy']:.0f} s, total {t['total']:.0f} s"
                + ("" if t["teacher"] else f" (teacher reused: it trained in {r['teacher']['train_s'] or 0:.0f} s"
                   f", distillation {r['distill']['train_s'] or 0:.0f} s)") + ".", "",
                "| k | replaced | val loss | vs teacher |", "|---|---|---|---|",
                f"| 0 | - (teacher) | {r['teacher']['val_loss']:.4f} | |"]
        out += [f"| {s['k']} | L{s['layer']} | {s['val_loss']:.4f} | {100 * s['rel_change']:+.2f}% |" for s in r["trajectory"]]
        for name, m in (("M_best", r["m_best"]), (f"M_opt (tolerance {r['tolerance']:.0%})", r["m_opt"])):
            full = [i for i in range(r["n_layer"]) if i not in m["linear_layers"]]
            out.append(f"\n**{name}**: {len(m['linear_layers'])}/{r['n_layer']} layers linear, "
                       f"full attention kept in {full or 'none'}, val loss {m['val_loss']:.4f}.")
        out += ["", "Distillation, relative MSE per layer: " +
                ", ".join(f"L{i} {x:.3f}" for i, x in enumerate(r["distill"]["rel_mse"])), ""]
        teacher_s, distill_s = r["teacher"].get("train_s"), r["distill"].get("train_s")
        if teacher_s and distill_s:  # the conversion's cost next to the teacher's
            out += [f"Distillation + greedy took {100 * (distill_s + t['greedy']) / teacher_s:.0f}% "
                    f"of the teacher's training time.", ""]
        if "baselines" in r:
            b, L = r["baselines"], r["n_layer"]
            out += ["Placement baselines, val loss at k linear layers (mean over k in the last column):", "",
                    "| placement | " + " | ".join(f"k={k}" for k in range(1, L + 1)) + " | mean |",
                    "|---" * (L + 2) + "|"]
            for name in ("greedy", "uniform", "importance", "random_mean"):
                out.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in b[name]) + f" | {sum(b[name]) / L:.4f} |")
            out += ["", f"Placement: {greedy_verdict(b)} (random: mean of {len(b['random_orders'])} orders).", ""]
        if "finetune" in r:
            f = r["finetune"]
            out += [f"Finetuning {f['iters']} steps end to end: teacher {f['teacher']['before']:.4f} -> "
                    f"{f['teacher']['after']:.4f}, M_opt {f['m_opt']['before']:.4f} -> {f['m_opt']['after']:.4f}.", ""]
        if "tasks" in r:
            out += [f"One search per target task (`--task {c['task']}`), same teacher and students:", ""] + \
                   tasks_markdown(r, r["tolerance"], r["n_layer"]) + [""]
    for bench in benches:
        batch = bench["batch"]
        speeds = [("decode_tok_s", "eager, 1 sequence"), (f"decode_tok_s_batch{batch}", f"eager, batch {batch}")]
        if bench.get("compiled"):
            speeds += [(key + "_compiled", label.replace("eager", "compiled")) for key, label in speeds]
        out += [f"#### Decoding speed and cache memory, M_opt of the `{bench['student']}` student "
                f"({bench['n_layer']} layers, {bench['n_embd']} wide, "
                f"{bench['new_tokens']} new tokens, median of {bench['repeats']} runs, {bench['machine']})", "",
                "| context | model | prefill s | " + " | ".join(f"tok/s, {label}" for _, label in speeds) + " | cache MiB |",
                "|---" * (len(speeds) + 4) + "|"]
        out += [f"| {w['context']} | {w['model']} | {w['prefill_s']:.3f} | " + " | ".join(f"{w[key]:.1f}" for key, _ in speeds)
                + f" | {w['cache_bytes'] / 2**20:.2f} |" for w in bench["rows"]]
        by = {(w["model"], w["context"]): w for w in bench["rows"]}
        # speed-ups: eager against eager; and, with compiling, each model in its faster mode (the
        # teacher's attention is not always faster compiled, and it should not be held back)
        ratios = [(label, key, False) for key, label in speeds[:2]]
        if bench.get("compiled"):
            ratios += [(label.replace("eager", "faster mode"), key, True) for key, label in speeds[:2]]
        tok_s = lambda w, key, best: max(w[key], w[key + "_compiled"]) if best else w[key]
        for name in ("all_linear", "m_opt"):
            out += ["", f"{name} ({bench['linear'][name]}/{bench['n_layer']} layers linear) against the teacher, same run:", "",
                    "| context | " + " | ".join(f"speed-up, {label}" for label, _, _ in ratios) + " | cache smaller by |",
                    "|---" * (len(ratios) + 2) + "|"]
            out += [f"| {n} | " + " | ".join(f"{tok_s(by[name, n], key, best) / tok_s(by['teacher', n], key, best):.1f}x"
                                             for _, key, best in ratios)
                    + f" | {by['teacher', n]['cache_bytes'] / by[name, n]['cache_bytes']:.0f}x |" for n in sorted({c for _, c in by})]
        out.append("")
    out += [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in pictures]
    return "\n".join(out)

def run_label(r):
    copy_frac = r["config"].get("copy_frac", 0.0)
    return f"`{r['student']}` student on {r['dataset']}" + (f", teacher trained with copy_frac {copy_frac}" if copy_frac else "")

def draw_pictures(reports, benches, folder="assets"):
    """PNG pictures for the README: loss vs k per placement, decoding vs context, layer patterns."""
    plt = pyplot()
    if plt is None:
        return []
    os.makedirs(folder, exist_ok=True)
    paths = []
    with_baselines = [r for r in reports if "baselines" in r]
    if with_baselines:
        fig, axes = plt.subplots(1, len(with_baselines), figsize=(5 * len(with_baselines), 3.6), squeeze=False)
        for ax, r in zip(axes[0], with_baselines):
            b, ks = r["baselines"], range(1, r["n_layer"] + 1)
            for name, style in (("uniform", "-"), ("importance", "--"), ("greedy", "-")):
                ax.plot(ks, b[name], marker="o", ls=style, lw=2.5 if name == "greedy" else 1.5, label=name, zorder=3)
            mean, std = torch.tensor(b["random_mean"]), torch.tensor(b["random_std"])
            ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label="random (mean, std)")
            ax.axhline(r["teacher"]["val_loss"], color="gray", ls="--", label="teacher")
            ax.set(title=run_label(r).replace("`", ""), xlabel="linear layers k", ylabel="val loss", xticks=ks)
            ax.legend(fontsize=8)
        paths.append(save_figure(fig, os.path.join(folder, "baselines.png")))
    if benches:
        batch, modes = benches[0]["batch"], ["eager"] + (["compiled"] if benches[0].get("compiled") else [])
        fig, axes = plt.subplots(1, len(modes) + 1, figsize=(5.5 * (len(modes) + 1), 4))
        curves = [("teacher", benches[0]), ("all_linear", benches[0])] + [("m_opt", b) for b in benches]
        for n, (name, bench) in enumerate(curves):
            rows = [w for w in bench["rows"] if w["model"] == name]
            ctx, color = [w["context"] for w in rows], f"C{n}"
            label = name if name != "m_opt" else f"M_opt {bench['student']} ({bench['linear']['m_opt']}/{bench['n_layer']} linear)"
            for ax, mode in zip(axes, modes):
                tail = "" if mode == "eager" else "_compiled"
                ax.plot(ctx, [w["decode_tok_s" + tail] for w in rows], marker="o", color=color)
                ax.plot(ctx, [w[f"decode_tok_s_batch{batch}" + tail] for w in rows], marker="s", ls="--", color=color)
            axes[-1].plot(ctx, [w["cache_bytes"] / 2**20 for w in rows], marker="o", color=color, label=label)
        for ax, mode in zip(axes, modes):
            ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decode tokens/s",
                   title=f"decoding, {mode} (solid: 1 sequence, dashed: batch {batch})")
        axes[-1].set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="cache MiB", title="cache memory")
        axes[-1].legend(fontsize=8)
        paths.append(save_figure(fig, os.path.join(folder, "decode.png")))
    L = max(r["n_layer"] for r in reports)
    fig, ax = plt.subplots(figsize=(5 + 0.9 * L, 1.2 + 0.5 * len(reports)))
    grid = [[float("nan") if i >= r["n_layer"] else 0.0 if i in r["m_opt"]["linear_layers"] else 1.0
             for i in range(L)] for r in reports]
    ax.imshow(grid, cmap="Blues", vmin=-0.5, vmax=1.5, aspect="auto")
    for row, cells in enumerate(grid):
        for i, full in enumerate(cells):
            if full == full:  # not nan
                ax.text(i, row, "full" if full else "linear", ha="center", va="center", fontsize=8)
    ax.set(xticks=range(L), yticks=range(len(reports)), xlabel="layer",
           title="M_opt: which layers keep full attention")
    ax.set_yticklabels([run_label(r).replace("`", "").replace(" student on", ",") for r in reports])
    paths.append(save_figure(fig, os.path.join(folder, "layers.png")))
    for n, r in enumerate(reports):
        if "tasks" in r:
            path = os.path.join(folder, f"tasks_{n}.png")
            plot_tasks(r["tasks"], r["tolerance"], r["n_layer"], path)
            paths.append(path)
    return paths

def update_readme(report_paths, readme="README.md"):
    reports, benches = [], []
    for p in report_paths:
        with open(p) as f:
            reports.append(json.load(f))
        bench = os.path.join(os.path.dirname(p), "decode_bench.json")
        if os.path.exists(bench):
            with open(bench) as f:
                benches.append(json.load(f))
            r = reports[-1]  # the bench's M_opt is this report's
            benches[-1].update(student=r["student"], linear={"m_opt": len(r["m_opt"]["linear_layers"]),
                                                             "all_linear": r["n_layer"]})
    text = open(readme).read()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        raise DtrError(f"{readme} has no {start} ... {end} markers to fill")
    pictures = draw_pictures(reports, benches, os.path.join(os.path.dirname(readme), "assets"))
    head, rest = text.split(start)
    new = head + start + "\n" + results_markdown(reports, benches, pictures) + "\n" + end + rest.split(end)[1]
    with open(readme + ".tmp", "w") as f:
        f.write(new)
    os.replace(readme + ".tmp", readme)
    print(f"rewrote the results section of {readme} from {len(reports)} report(s), pictures in {pictures}")

# ---- main ----

def parse_args(argv=None):
    """Config from the command line: defaults <- preset <- the flags the user gave."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        if isinstance(f.default, bool):
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            parser.add_argument(f"--{f.name}", type=type(f.default), default=None, help=f.metadata["help"])
    args = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    preset = args.get("preset") or ("gpu" if args.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    if preset not in PRESETS:
        raise DtrError(f"unknown --preset {preset!r}; use one of {', '.join(PRESETS)}")
    bpe = BUILTIN.get(args.get("dataset"), args.get("tokenizer")) == "gpt2"
    cfg = Config(**{**PRESETS[preset], **(BPE_OVERRIDES.get(preset, {}) if bpe else {}), **args, "preset": preset})
    if not cfg.out_dir:
        name = os.path.splitext(os.path.basename(cfg.dataset))[0]
        cfg.out_dir = os.path.join("out", f"{name}-{preset}")
    return cfg

def run(cfg):
    t_start = time.time()
    device, bf16 = choose_device(cfg.device)
    torch.manual_seed(cfg.seed)
    if cfg.readme:
        return update_readme(cfg.readme.split(","))
    if cfg.bench_decode:
        report_path = os.path.join(cfg.out_dir, cfg.student, "report.json")
        if not os.path.exists(report_path):
            raise DtrError(f"--bench_decode times this run's M_opt, but {report_path} does not exist; run without --bench_decode first")
        with open(report_path) as f:
            m_opt = json.load(f)["m_opt"]["linear_layers"]
        try:
            contexts = [int(n) for n in cfg.bench_decode.split(",")]
        except ValueError:
            raise DtrError(f"--bench_decode wants comma-separated token counts, e.g. 512,2048,8192; got {cfg.bench_decode!r}") from None
        patterns = {"teacher": [], "m_opt": m_opt, "all_linear": list(range(cfg.n_layer))}
        result = bench_decode(cfg, device, patterns, contexts)
        atomic_save(result, os.path.join(cfg.out_dir, cfg.student, "decode_bench.json"))
        print(f"wrote {os.path.join(cfg.out_dir, cfg.student, 'decode_bench.json')}")
        return result
    if cfg.sample:
        model, ckpt = load_model(cfg.sample, device)
        print(f"{cfg.sample}: linear layers {ckpt.get('linear_layers', [])}, val loss {ckpt.get('val_loss', float('nan')):.4f}")
        print(sample_text(model, ckpt["meta"], cfg.sample_tokens, device, cfg.seed))
        return None
    if not 0 <= cfg.tolerance < 1:
        raise DtrError(f"--tolerance {cfg.tolerance} is outside [0, 1); it is a relative increase, e.g. 0.02 for 2%")
    if cfg.student not in ("gla", "hedgehog"):
        raise DtrError(f"unknown --student {cfg.student!r}; use gla or hedgehog")
    train, val, meta = load_data(cfg)
    if len(train) < cfg.block_size + 2:
        raise DtrError(f"the training split has {len(train)} tokens, fewer than the context "
                       f"({cfg.block_size}) + 2; use a longer text or a smaller --block_size")
    val_b = fixed_batches(val, cfg.block_size, cfg.batch_size, cfg.val_batches, device)
    tasks = task_batches(cfg, val, val_b, meta, device)
    print(f"data     {meta['dataset']}: {len(train):,} train / {len(val):,} val tokens, vocab {len(meta['vocab']):,}")

    # 1. the teacher: reuse it, or train it
    teacher_path = os.path.join(cfg.out_dir, "teacher.pt")
    t0 = time.time()
    if os.path.exists(teacher_path):
        model, ckpt = load_model(teacher_path, device)
        check_compatible(ckpt, cfg, meta, teacher_path)
        print(f"teacher  reusing {teacher_path}")
        t_teacher, teacher_train_s = 0.0, ckpt.get("train_s")
    else:
        import train_teacher  # imports this file, so imported here rather than at the top
        model = train_teacher.train(cfg, train, val, meta, device, bf16, teacher_path)
        t_teacher = teacher_train_s = time.time() - t0
    model.requires_grad_(False)

    # 2. blockwise local distillation, or its saved result
    run_dir = os.path.join(cfg.out_dir, cfg.student)
    students_path = os.path.join(run_dir, "students.pt")
    with open(teacher_path, "rb") as f:
        teacher_sha = hashlib.sha256(f.read()).hexdigest()
    distill_key = {"teacher_sha256": teacher_sha, "student": cfg.student, "distill_iters": cfg.distill_iters,
                   "distill_lr": cfg.distill_lr, "distill_batch_size": cfg.distill_batch_size, "seed": cfg.seed}
    students = [s.to(device) for s in make_students(model, cfg.student == "gla")]
    t0 = time.time()
    saved = torch.load(students_path, map_location=device) if os.path.exists(students_path) else None
    distill_train_s = None
    if saved is not None and saved["key"] == distill_key:
        for s, sd in zip(students, saved["students"]):
            s.load_state_dict(sd)
        distill_train_s = saved.get("train_s")
        print(f"distill  reusing {students_path}")
    else:
        distill_blocks(model, students, train, cfg, device, bf16, students_path[:-3] + ".partial.pt", distill_key)
        distill_train_s = time.time() - t0
    mse, rel_mse = block_mse(model, students, val_b, device, bf16)
    if not all(math.isfinite(m) for m in mse):
        raise DtrError(f"distilled students produce NaN/inf (per-layer MSE {mse}); lower --distill_lr and rerun")
    atomic_save({"key": distill_key, "students": [s.state_dict() for s in students], "train_s": distill_train_s}, students_path)
    discard(students_path[:-3] + ".partial.pt")
    t_distill = time.time() - t0
    print("distill  per-layer MSE " + " ".join(f"L{i} {m:.5f}" for i, m in enumerate(mse)))
    print("distill  relative MSE  " + " ".join(f"L{i} {r:.4f}" for i, r in enumerate(rel_mse)))

    # 3. greedy replacement
    t0 = time.time()
    greedy_path = os.path.join(run_dir, "greedy.partial.json")
    greedy_key = {**distill_key, "val_batches": cfg.val_batches, "batch_size": cfg.batch_size}
    teacher_loss, trajectory = greedy_replace(model, students, val_b, device, bf16, greedy_path, greedy_key)
    m_best, m_opt = select_models(teacher_loss, trajectory, cfg.tolerance)
    t_greedy = time.time() - t0
    print_trajectory(teacher_loss, trajectory, m_best, m_opt, cfg.tolerance)
    for name, m in (("m_best", m_best), ("m_opt", m_opt)):
        save_hybrid(os.path.join(run_dir, name + ".pt"), model, students, m["linear_layers"], cfg, meta, m["val_loss"])
    # 3b. one search per target task, sharing the teacher and the students (paper §4)
    tasks_report = run_tasks(model, students, tasks, cfg, run_dir, device, bf16, done={"lm": (teacher_loss, trajectory)})
    extra = {}
    if cfg.baselines:  # paper Fig. 4: is greedy better than the obvious placements?
        extra["baselines"] = placement_baselines(model, students, val_b, trajectory, seed=cfg.seed, device=device, bf16=bf16)
        print_baselines(extra["baselines"])
    if cfg.finetune_iters:  # paper §4.2: a short end-to-end finetune of the hybrid, and of the teacher for fairness
        extra["finetune"] = {"iters": cfg.finetune_iters, **{
            name: finetune(model, layers, students, train, val_b, cfg, device, bf16)
            for name, layers in (("teacher", []), ("m_opt", m_opt["linear_layers"]))}}
        print(f"finetune {cfg.finetune_iters} steps | " + " | ".join(
            f"{n} {v['before']:.4f} -> {v['after']:.4f}" for n, v in extra["finetune"].items() if n != "iters"))
    report = {
        "dataset": meta["dataset"], "student": cfg.student, "device": device, "config": dataclasses.asdict(cfg),
        "command": ("python " if world() == 1 else f"torchrun --standalone --nproc_per_node={world()} ") +
                   " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "n_layer": cfg.n_layer, "teacher": {"val_loss": teacher_loss, "train_s": teacher_train_s},
        "distill": {"mse": mse, "rel_mse": rel_mse, "train_s": distill_train_s}, "trajectory": trajectory, "tolerance": cfg.tolerance,
        "m_best": m_best, "m_opt": m_opt,
        **tasks_report,
        "timings_s": {"teacher": t_teacher, "distill": t_distill, "greedy": t_greedy, "total": time.time() - t_start},
        **extra,
    }
    atomic_save(report, os.path.join(run_dir, "report.json"))
    discard(greedy_path)
    print(f"timings  teacher {t_teacher:.0f}s | distill {t_distill:.0f}s | greedy {t_greedy:.0f}s | "
          f"total {time.time() - t_start:.0f}s")

    # 4. what the two models write
    print(f"\n---- sample from the teacher ----\n{sample_text(model, meta, cfg.sample_tokens, device, cfg.seed)}")
    with hybrid(model, m_opt["linear_layers"], students):
        print(f"\n---- sample from M_opt (linear layers {m_opt['linear_layers']}) ----\n"
              f"{sample_text(model, meta, cfg.sample_tokens, device, cfg.seed)}")
    print(f"\nwrote {run_dir}/: report.json, students.pt, m_best.pt, m_opt.pt "
          f"(generate more: python dtr.py --sample {run_dir}/m_opt.pt)")
    return report

def main(argv=None, job=run):
    """The command line (train_teacher.py passes its own job): one-line errors, a note on Ctrl-C."""
    try:
        cfg = parse_args(argv)
        job(cfg)
    except DtrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # *.partial.* are the unfinished phases' checkpoints (the logs above say which step)
        found = [f for f in sorted(glob.glob(os.path.join(cfg.out_dir, "**", "*.partial.*"), recursive=True))
                 if not f.endswith(".tmp")]
        print(f"\ninterrupted; rerun the same command to resume{' from ' + ', '.join(found) if found else ''} "
              f"(finished phases are reused)", file=sys.stderr)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()

if __name__ == "__main__":
    main()
