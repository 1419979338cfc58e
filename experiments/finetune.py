"""
A short end-to-end finetune after replacement (paper §4.2): M_opt, and the teacher for the same
number of steps so the comparison is fair, each trained with all parameters at a small
learning rate; loss on the test batches before and after. The run's own files are left untouched.

    python experiments/finetune.py out/shakespeare_char-cpu/gla --iters 200   # writes finetune.json there
"""
import copy
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # dtr.py sits one folder up
import torch  # noqa: E402

import dtr  # noqa: E402
from plumbing import atomic_save, autocast, choose_device, cli, opt, parse_config  # noqa: E402
from train_teacher import get_batch, val_loss  # noqa: E402

@dataclass
class FinetuneConfig:
    """the finetune"""
    run_dir: str = opt("", "a finished run's folder, e.g. out/shakespeare_char-cpu/gla", positional=True)
    iters: int = opt(200, "finetuning steps, for M_opt and for the teacher", ">0")
    device: str = opt("auto", "where to run", ("auto", "cpu", "cuda", "mps"))

def finetune(model, layers, students, train, val_b, cfg, iters, device="cpu", bf16=False):
    """Train a copy of the model with `layers` linear, end to end, at the teacher's final learning
    rate (min_lr), on batch_size sequences a step; {"before", "after"}: its loss on val_b."""
    with dtr.hybrid(model.transformer.h, layers, students):
        tuned = copy.deepcopy(model).requires_grad_(True)
    before = val_loss(tuned.eval(), val_b, device, bf16)
    tuned.train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=cfg.min_lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed + 2)  # the same batches for teacher and hybrid
    for _ in range(iters):
        x, y = get_batch(train, cfg.block_size, cfg.batch_size, device, gen)
        with autocast(device, bf16):
            _, loss = tuned(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tuned.parameters(), cfg.grad_clip)
        optimizer.step()
    return {"before": before, "after": val_loss(tuned.eval(), val_b, device, bf16)}

def run(args):
    device, bf16 = choose_device(args.device)
    cfg, report, model, students, (train, val, _) = dtr.load_run(args.run_dir, device)
    val_b = dtr.lm_batches(cfg, val, device, test=True)  # the held-out test batches
    result = {"iters": args.iters, **{name: finetune(model, layers, students, train, val_b, cfg, args.iters, device, bf16)
                                      for name, layers in (("teacher", []), ("m_opt", report["m_opt"]["linear_layers"]))}}
    print(f"finetune {args.iters} steps | " + " | ".join(
        f"{n} {v['before']:.4f} -> {v['after']:.4f}" for n, v in result.items() if n != "iters"))
    atomic_save(result, os.path.join(args.run_dir, "finetune.json"))
    print(f"wrote {os.path.join(args.run_dir, 'finetune.json')}")
    return result

def main(argv=None):
    cli(run, lambda a: parse_config(FinetuneConfig, a, __doc__), argv)

if __name__ == "__main__":
    main()
