"""
Train the full-attention teacher: a nanoGPT-style GPT on the chosen dataset.

    python train_teacher.py --dataset shakespeare_char          # writes out/shakespeare_char-cpu/teacher.pt

dtr.py calls train() itself when no teacher checkpoint exists; the flags are dtr.py's.
"""
import dataclasses
import math
import os
import sys
import time

import torch

from dtr import (GPT, GPTConfig, DtrError, atomic_save, autocast, choose_device,
                 fixed_batches, fmt_time, get_batch, load_data, model_args, parse_args, val_loss)

def lr_at(it, cfg):
    """Linear warmup, then cosine decay from lr to min_lr (as in nanoGPT)."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / cfg.warmup_iters
    progress = (it - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)

def train(cfg, train_data, val_data, meta, device, bf16, ckpt_path):
    """Train from scratch and write the checkpoint atomically. Returns the trained model."""
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
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.time()
    for it in range(cfg.max_iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, cfg)
        x, y = get_batch(train_data, cfg.block_size, cfg.batch_size, device, gen)
        model.train()
        with autocast(device, bf16):
            _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        last = it == cfg.max_iters - 1
        if it % (cfg.eval_interval // 5 or 1) == 0 or last:
            evaluate = it % cfg.eval_interval == 0 or last
            if evaluate:  # a couple of fixed batches for progress, all of them at the end
                vl = val_loss(model.eval(), val_b if last else val_b[:2], device, bf16)
            dt = time.time() - t0
            eta = dt / (it + 1) * (cfg.max_iters - it - 1)
            print(f"teacher  step {it + 1}/{cfg.max_iters} | train {loss.item():.4f} | " +
                  (f"val {vl:.4f} | " if evaluate else "") +
                  f"{1000 * dt / (it + 1):.0f} ms/step | elapsed {fmt_time(dt)} | eta {fmt_time(eta)}")
        if not math.isfinite(loss.item()):
            raise DtrError(f"teacher training diverged (loss {loss.item()}) at step {it}; lower --lr (now {cfg.lr})")
    model.eval()
    atomic_save({"model_args": model_args(cfg, meta), "state_dict": model.state_dict(),
                 "config": dataclasses.asdict(cfg), "meta": meta, "val_loss": vl, "iter_num": cfg.max_iters},
                ckpt_path)
    print(f"teacher  val loss {vl:.4f}, saved {ckpt_path}")
    return model

def main(argv=None):
    try:
        cfg = parse_args(argv)
        device, bf16 = choose_device(cfg.device)
        train_data, val_data, meta = load_data(cfg)
        train(cfg, train_data, val_data, meta, device, bf16, os.path.join(cfg.out_dir, "teacher.pt"))
    except DtrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

if __name__ == "__main__":
    main()
