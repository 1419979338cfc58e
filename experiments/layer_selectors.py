"""
Layer selectors side by side: which layers should keep softmax attention? With the
run's teacher and students, each selector's hybrid with k linear layers, k = 1..L, scored on the
search and the held-out test batches:

- greedy: the run's own order (Algorithm 1);
- importance: one-shot, each layer's metric when swapped alone (greedy's first round);
- uniform: k evenly spaced layers; random: random orders (mean and spread);
- restore_one: from the all-linear model, each layer's softmax attention put back alone; the
  layers whose restoration helps most stay full (KL-guided layer selection, arXiv 2512.20569,
  here by the task metric);
- distill_error: the layers with the largest relative block MSE after distillation stay full;
- reverse_greedy: from the all-linear model, restore one layer at a time, each time the one that
  helps most (exercise 7), and replace in the reverse order;
- the oracle's best layout at each k (by search, and on test), from the table experiments/oracle.py
  saved, where it scored these very batches with this teacher, these students and this metric
  (otherwise the table is not reused, and the line that says so names what differs).

Each selector decides on the search batches only. Next to the mean over k on the test batches:
its difference from greedy's and the paired standard error of that difference over the test
batches, so a ranking can be read against the noise.

    python experiments/layer_selectors.py out/shakespeare_char-cpu/gla      # writes layer_selectors.json there
"""
import os
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import torch

import dtr
import oracle
import tasks
from baselines import importance_order, uniform_layouts
from plumbing import autocast, load_file, opt

@dataclass
class SelectorsConfig(frame.RunConfig):
    """the layer selectors"""
    n_random: int = opt(5, "random orders to average", ">0")

class Scores:
    """Per-batch scores (tasks.batch_scores) of any layout, evaluated once: from the oracle's table
    where it ran on the same batches, else by a forward of the hybrid."""

    def __init__(self, model, students, batches, table=None, device="cpu", bf16=False):
        self.model, self.students, self.batches, self.device, self.bf16 = model, students, batches, device, bf16
        self.rows = {} if table is None else {mask: [tuple(r) for r in t.tolist()] for mask, t in enumerate(table)}

    @torch.no_grad()
    def __call__(self, layers):
        mask = sum(1 << i for i in layers)
        if mask not in self.rows:
            with dtr.hybrid(self.model.transformer.h, layers, self.students), autocast(self.device, self.bf16):
                self.rows[mask] = [tasks.batch_scores(*self.model(x, y), y) for x, y in self.batches]
        return self.rows[mask]

def by_order(order):
    """The layouts of an order of replacement: its first k layers, k = 1..L."""
    return [sorted(order[:k]) for k in range(1, len(order) + 1)]

def reverse_greedy(score, L, metric):
    """From all-linear, restore the layer that helps most, one at a time; the order of
    replacement is the reverse of the order of restoring."""
    sign, linear, restored = tasks.METRICS[metric], list(range(L)), []
    while linear:
        best = min(linear, key=lambda i: sign * score([j for j in linear if j != i]))
        linear.remove(best)
        restored.append(best)
    return restored[::-1]

def select(report, score, L, metric, n_random, seed):
    """{selector: its layouts at k = 1..L}, each chosen with `score` (the search batches)."""
    sign = tasks.METRICS[metric]
    all_linear = list(range(L))
    gen = torch.Generator().manual_seed(seed)
    restore_one = sorted(range(L), key=lambda i: -sign * score([j for j in all_linear if j != i]))  # least help first
    layouts = {
        "greedy": by_order([t["layer"] for t in report["trajectory"]]),
        "importance": by_order(importance_order(report["trajectory"], metric)),
        "uniform": uniform_layouts(L),
        "restore_one": by_order(restore_one),
        "distill_error": by_order(sorted(range(L), key=lambda i: report["distill"]["rel_mse"][i])),
        "reverse_greedy": by_order(reverse_greedy(score, L, metric)),
    }
    for n in range(n_random):
        layouts[f"random{n}"] = by_order(torch.randperm(L, generator=gen).tolist())
    return layouts

NAMES = ("greedy", "importance", "uniform", "random_mean", "restore_one", "distill_error", "reverse_greedy")

def print_result(r, L):
    for split in ("search", "test"):
        for name in NAMES:
            print(f"select   {split:6s} {name:14s} " + " ".join(f"{x:.4f}" for x in r[split][name]) + f" | mean over k {sum(r[split][name]) / L:.4f}")
    print("select   test, mean over k against greedy's (paired se over batches): " +
          ", ".join(f"{n} {v['diff']:+.4f} ({v['paired_se']:.4f})" for n, v in r["vs_greedy_test"].items()))

def oracle_table(path, key, run_dir):
    """oracle.pt where it scored these batches (each split's sha256 in `key`) with the same teacher,
    students, metric and precision, else None, with one line saying what differs."""
    if not os.path.exists(path):
        return None
    table = load_file(path, f"delete it and rerun python experiments/oracle.py {run_dir}", ("key", "metric", "search", "test"))
    why = frame.differs(table["key"], {k: key[k] for k in ("teacher_sha256", "students_sha256", "metric", "precision",
                                                           "search_sha256", "test_sha256")})
    if why:
        print(f"select   {path} not reused: it was computed {why}; every layout is scored here, and the oracle's "
              f"rows are left out (rerun python experiments/oracle.py {run_dir} for them)")
    return None if why else table

def run(args):
    device, bf16, cfg, report, model, students, (_, val, _) = frame.open_run(args)
    L, m = cfg.n_layer, report["metric"]
    splits = {"search": tasks.lm_batches(cfg, val, device), "test": tasks.lm_batches(cfg, val, device, test=True)}
    key = frame.result_key(report, bf16, **splits)
    table = oracle_table(os.path.join(args.run_dir, "oracle.pt"), key, args.run_dir)
    scores = {s: Scores(model, students, b, None if table is None else table[s], device, bf16) for s, b in splits.items()}
    P = {s: (lambda layers, s=s: tasks.reduce(scores[s](layers), m)) for s in splits}
    layouts = select(report, P["search"], L, m, args.n_random, cfg.seed)
    result = {"key": key, "metric": m, "layouts": layouts, "n_random": args.n_random,
              "from_oracle_table": {s: table is not None for s in splits}}
    for s in splits:
        curves = {name: [P[s](layers) for layers in ls] for name, ls in layouts.items()}
        rand = torch.tensor([curves.pop(f"random{n}") for n in range(args.n_random)])
        result[s] = {**curves, "random_mean": rand.mean(0).tolist(), "random_std": rand.std(0).tolist() if args.n_random > 1 else [0.0] * L}
    # noise on the test batches: each selector's mean over k, per batch, against greedy's
    per_batch = lambda layers: torch.tensor([tasks.reduce([r], m) for r in scores["test"](layers)], dtype=torch.float64)
    mean_k = {name: torch.stack([per_batch(layers) for layers in ls]).mean(0) for name, ls in layouts.items()}
    mean_k["random_mean"] = torch.stack([mean_k.pop(f"random{n}") for n in range(args.n_random)]).mean(0)
    n = len(splits["test"])
    result["vs_greedy_test"] = {name: {"diff": (v - mean_k["greedy"]).mean().item(),
                                       "paired_se": ((v - mean_k["greedy"]).std() / n ** 0.5).item() if n > 1 else float("nan")}
                                for name, v in mean_k.items() if name != "greedy"}
    if table is not None:  # the oracle's best at each k, on the table of these very batches
        table_of = lambda s: oracle.metric_table([scores[s].rows[mask] for mask in range(2 ** L)], m)
        per_k = oracle.per_k(table_of("search"), table_of("test"), [t["layer"] for t in report["trajectory"]], m)
        result["oracle"] = {f"{s}_{pick}": [p[pick][s] for p in per_k[1:]] for s in splits
                            for pick in ("best_by_search", "best_on_test")}
    print_result(result, L)
    return frame.write_result(result, args, "layer_selectors.json")

def markdown(r):
    """RESULTS.md's table: every selector's test metric at each k and its mean over k, with the
    difference from greedy's and its paired standard error; the oracle's best where it ran."""
    m, test = r["metric"], r["test"]
    L = len(test["greedy"])
    out = [f"Layer selectors (`python experiments/layer_selectors.py <run folder>`), test {m} at k linear layers, each chosen on the search batches:", "",
           "| selector | " + " | ".join(f"k={k}" for k in range(1, L + 1)) + " | mean | vs greedy (paired se) |", "|---" * (L + 3) + "|"]
    for name in NAMES:
        vs = r["vs_greedy_test"].get(name)
        out.append(f"| {name} | " + " | ".join(f"{x:.4f}" for x in test[name]) + f" | {sum(test[name]) / L:.4f} | "
                   + (f"{vs['diff']:+.4f} ({vs['paired_se']:.4f})" if vs else "") + " |")
    for key, shown in (("test_best_by_search", "oracle, best by search"), ("test_best_on_test", "oracle, best on test")):
        if "oracle" in r:
            out.append(f"| {shown} | " + " | ".join(f"{x:.4f}" for x in r["oracle"][key]) + f" | {sum(r['oracle'][key]) / L:.4f} | |")
    return out + ["", f"Random: mean of {r['n_random']} orders. A difference within about two paired standard errors is noise.", ""]

def main(argv=None):
    frame.command(SelectorsConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
