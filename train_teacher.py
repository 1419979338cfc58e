"""
Train the full-attention teacher: a nanoGPT-style GPT on the chosen dataset.

    python train_teacher.py --dataset shakespeare_char          # writes out/shakespeare_char-cpu/teacher.pt
    torchrun --standalone --nproc_per_node=2 train_teacher.py   # the same, data-parallel over 2 processes

dtr.py calls train() itself when no teacher checkpoint exists; the flags are dtr.py's. An
interrupted run resumes from teacher.partial.pt, written every save_interval steps.
"""
import dataclasses
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import dtr
from dtr import (GPT, GPTConfig, DtrError, atomic_save, autocast, barrier, check_compatible, check_resumable,
                 choose_device, discard, fixed_batches, fmt_time, get_batch, load_data, model_args, rank,
                 repeat_first_half, val_loss, world)

# the settings a resumed run must share with the run that wrote teacher.partial.pt
# (the model's size and the data are checked by check_compatible)
TRAIN_FIELDS = ("seed", "batch_size", "max_iters", "lr", "min_lr", "warmup_iters", "weight_decay", "grad_clip", "dropout", "copy_frac")

def lr_at(it, cfg):
    """Linear warmup, then cosine decay from lr to min_lr (as in nanoGPT)."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)

def train(cfg, train_data, val_data, meta, device, bf16, ckpt_path):
    """Train from scratch, or resume, and write the checkpoint atomically. Returns the trained model.
    Under torchrun each process takes its own slice of every step's batch (DistributedDataParallel
    averages the gradients), so a step sees the same batch_size sequences at any process count."""
    micro = cfg.batch_size // (cfg.grad_accum * world())  # sequences per forward pass
    if micro * cfg.grad_accum * world() != cfg.batch_size:
        raise DtrError(f"--batch_size {cfg.batch_size} does not split into --grad_accum {cfg.grad_accum} "
                       f"x {world()} processes; make it a multiple of {cfg.grad_accum * world()}")
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**model_args(cfg, meta))).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"teacher  {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, context {cfg.block_size}, "
          f"{n_params / 1e6:.2f}M parameters, {cfg.max_iters} steps of {cfg.batch_size} sequences")
    # weight decay on matrices only, as in nanoGPT
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))
    val_b = fixed_batches(val_data, cfg.block_size, cfg.batch_size, cfg.val_batches, device)
    gen = torch.Generator().manual_seed(cfg.seed)  # the same on every process: the same batches
    resume_path = ckpt_path[:-3] + ".partial.pt"
    start = 0
    if os.path.exists(resume_path):
        ckpt = torch.load(resume_path, map_location=device)
        check_compatible(ckpt, cfg, meta, resume_path)
        check_resumable(ckpt["config"], {f: getattr(cfg, f) for f in TRAIN_FIELDS}, resume_path)
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["rng"])  # dropout masks on the CPU; a GPU's are not restored
        start = ckpt["step"]
        print(f"teacher  resuming {resume_path} at step {start}/{cfg.max_iters}")
    ddp_model = DDP(model) if world() > 1 else model  # ---- distributed: all-reduces gradients in backward
    t0 = time.time()
    for it in range(start, cfg.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, cfg)
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
        if (it + 1) % cfg.save_interval == 0 and it + 1 < cfg.max_iters:
            atomic_save({"model_args": model_args(cfg, meta), "state_dict": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "config": dataclasses.asdict(cfg), "meta": meta,
                         "step": it + 1, "gen": gen.get_state(), "rng": torch.get_rng_state()}, resume_path)
        last = it == cfg.max_iters - 1
        if it % (cfg.eval_interval // 5 or 1) == 0 or last:
            evaluate = it % cfg.eval_interval == 0 or last
            if evaluate:  # a couple of fixed batches for progress, all of them at the end
                vl = val_loss(model.eval(), val_b if last else val_b[:2], device, bf16)
            dt = time.time() - t0
            eta = dt / (it + 1 - start) * (cfg.max_iters - it - 1)
            print(f"teacher  step {it + 1}/{cfg.max_iters} | train {loss.item():.4f} | " +
                  (f"val {vl:.4f} | " if evaluate else "") +
                  f"{1000 * dt / (it + 1 - start):.0f} ms/step | elapsed {fmt_time(dt)} | eta {fmt_time(eta)}")
        if not math.isfinite(loss.item()):
            raise DtrError(f"teacher training diverged (loss {loss.item()}) at step {it}; lower --lr (now {cfg.lr})")
    model.eval()
    atomic_save({"model_args": model_args(cfg, meta), "state_dict": model.state_dict(),
                 "config": dataclasses.asdict(cfg), "meta": meta, "val_loss": vl, "iter_num": cfg.max_iters,
                 "train_s": time.time() - t0},  # this process's share, if it resumed a partial run
                ckpt_path)
    discard(resume_path)
    barrier()  # the other processes read teacher.pt next
    print(f"teacher  val loss {vl:.4f}, saved {ckpt_path}")
    return model

def teach(cfg):
    device, bf16 = choose_device(cfg.device)
    train_data, val_data, meta = load_data(cfg)
    train(cfg, train_data, val_data, meta, device, bf16, os.path.join(cfg.out_dir, "teacher.pt"))

def main(argv=None):
    dtr.main(argv, job=teach)  # dtr's command line: its flags, error messages and Ctrl-C note

if __name__ == "__main__":
    main()
