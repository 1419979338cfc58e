"""
A short end-to-end finetune after replacement (paper §4.2): M_opt, and the teacher for the same
number of steps so the comparison is fair, each trained with all parameters at a small
learning rate; loss on the test batches before and after. The run's own files are left untouched.

    python experiments/finetune.py out/shakespeare_char-cpu/gla --iters 200   # writes finetune.json there
"""
import copy
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import torch

import dtr
import tasks
from plumbing import autocast, opt
from train_teacher import get_batch, val_loss

@dataclass
class FinetuneConfig(frame.RunConfig):
    """the finetune"""
    iters: int = opt(200, "finetuning steps, for M_opt and for the teacher", ">0")

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

def markdown(f):
    """RESULTS.md's line: test loss before and after, for the teacher and M_opt."""
    return [f"Finetuning {f['iters']} steps end to end (`python experiments/finetune.py <run folder>`), test loss: "
            f"teacher {f['teacher']['before']:.4f} -> {f['teacher']['after']:.4f}, "
            f"M_opt {f['m_opt']['before']:.4f} -> {f['m_opt']['after']:.4f}.", ""]

def run(args):
    device, bf16, cfg, report, model, students, (train, val, _) = frame.open_run(args)
    val_b = tasks.lm_batches(cfg, val, device, test=True)  # the held-out test batches
    models = (("teacher", []), ("m_opt", report["m_opt"]["linear_layers"]))
    result = {"key": frame.result_key(report, bf16, test=val_b), "iters": args.iters,
              **{name: finetune(model, layers, students, train, val_b, cfg, args.iters, device, bf16) for name, layers in models}}
    print(f"finetune {args.iters} steps | " + " | ".join(
        f"{n} {result[n]['before']:.4f} -> {result[n]['after']:.4f}" for n, _ in models))
    return frame.write_result(result, args, "finetune.json")

def main(argv=None):
    frame.command(FinetuneConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
