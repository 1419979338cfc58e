"""
Placement baselines (paper Fig. 4): is greedy's order better than the obvious alternatives?
With the same students, the loss at every k = 1..L of: k evenly spaced layers (uniform);
one-shot importance (replace in the order of each layer's loss when swapped alone, i.e.
greedy's first round); random orders (mean and std). On the search batches greedy chose on,
and on the held-out test batches, where the comparison is fair to the baselines.

    python experiments/baselines.py out/shakespeare_char-cpu/gla     # writes baselines.json there
"""
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import torch

import dtr
import tasks
from plumbing import DtrError, opt

@dataclass
class BaselinesConfig(frame.RunConfig):
    """the placement baselines"""
    n_random: int = opt(5, "random orders to average", ">0")

def uniform_layouts(L):
    """k evenly spaced layers, for k = 1..L."""
    return [sorted({int((i + 0.5) * L / k) for i in range(k)}) for k in range(1, L + 1)]

def importance_order(trajectory, metric="loss"):
    """One-shot importance: layers in the order of their metric when swapped alone (greedy's first round)."""
    return sorted(range(len(trajectory)), key=lambda i: tasks.METRICS[metric] * trajectory[0]["candidates"][i])

@torch.no_grad()
def placement_baselines(model, students, batches, trajectory, greedy, n_random=5, seed=0, device="cpu", bf16=False):
    """{"greedy" (given: its loss at k = 1..L on these batches), "uniform", "importance",
    "random_mean", "random_std": loss at k = 1..L, and the layers each baseline chose}."""
    L = len(students)
    uniform, importance = uniform_layouts(L), importance_order(trajectory)
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(L, generator=gen).tolist() for _ in range(n_random)]

    def loss_of(layers):
        with dtr.hybrid(model.transformer.h, layers, students):
            return tasks.evaluate(model, batches, device, bf16)["loss"]

    random_losses = torch.tensor([[loss_of(order[:k]) for k in range(1, L + 1)] for order in orders])
    return {"greedy": greedy, "uniform": [loss_of(layers) for layers in uniform],
            "importance": [loss_of(importance[:k]) for k in range(1, L + 1)],
            "random_mean": random_losses.mean(0).tolist(), "random_std": random_losses.std(0).tolist(),
            "uniform_layers": uniform, "importance_order": importance, "random_orders": orders}

def greedy_verdict(b):
    # at or below, up to float noise: greedy's cached evaluation and a plain forward differ by ~1e-7
    worse = [k + 1 for k in range(len(b["greedy"]))
             if any(b["greedy"][k] > b[n][k] * (1 + 1e-6) for n in ("uniform", "importance", "random_mean"))]
    return ("greedy is at or below every baseline at every k" if not worse else
            f"greedy is above some baseline at k = {worse}")

def markdown(result):
    """RESULTS.md's tables: loss at every k of each placement, on the search and the test batches."""
    out = []
    for split in ("search", "test"):
        b = result[split]
        L = len(b["greedy"])
        out += [f"Placement baselines (`python experiments/baselines.py <run folder>`), loss on the {split} batches at k linear layers:", "",
                "| placement | " + " | ".join(f"k={k}" for k in range(1, L + 1)) + " | mean |", "|---" * (L + 2) + "|"]
        out += [f"| {n} | " + " | ".join(f"{x:.4f}" for x in b[n]) + f" | {sum(b[n]) / L:.4f} |"
                for n in ("greedy", "uniform", "importance", "random_mean")]
        out += ["", f"Placement on the {split} batches: {greedy_verdict(b)} (random: mean of {len(b['random_orders'])} orders).", ""]
    return out

def run(args):
    device, bf16, cfg, report, model, students, (_, val, _) = frame.open_run(args)
    if report["metric"] != "loss":
        raise DtrError(f"{args.run_dir} was searched by {report['metric']}; the baselines compare losses, run one with --metric loss")
    search, test = tasks.lm_batches(cfg, val, device), tasks.lm_batches(cfg, val, device, test=True)
    trajectory = report["trajectory"]
    result = {split: placement_baselines(model, students, batches, trajectory, greedy, args.n_random, cfg.seed, device, bf16)
              for split, batches, greedy in (("search", search, [t["val_loss"] for t in trajectory]),
                                             ("test", test, [s["loss"] for s in report["test"][1:]]))}
    for split in ("search", "test"):
        b = result[split]
        for name in ("greedy", "uniform", "importance", "random_mean"):
            print(f"baseline {split:6s} {name:11s} " + " ".join(f"{x:.4f}" for x in b[name]) + f" | mean over k {sum(b[name]) / len(b[name]):.4f}")
        print(f"baseline {split:6s} {greedy_verdict(b)}")
    return frame.write_result({"key": frame.result_key(report, bf16, search=search, test=test), **result}, args, "baselines.json")

def main(argv=None):
    frame.command(BaselinesConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
