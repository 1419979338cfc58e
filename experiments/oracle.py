"""
The exhaustive oracle: how good is greedy, really? Every one of the 2^L layouts (which
layers are linear) of a finished run is scored on the search and the test batches, so greedy's gap
to the best possible hybrid with k linear layers is a measured number. Then how much of greedy's
order is noise: each round's winning margin against the paired standard error over batches, and
greedy replayed on the table over resampled and fewer search batches.

    python experiments/oracle.py out/shakespeare_char-cpu12/gla      # writes oracle.json, oracle.pt there

Layouts that share their first layers share that computation: a depth-first walk over the binary
tree "layer i full or linear" keeps each block's output while the layouts below it are scored, so
a batch costs 2^(L+1) - 2 block forwards instead of L 2^L, and holds at most L + 1 hidden states.
"""
import dataclasses
import random
import time
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import torch

import dtr
import tasks
from plumbing import DtrError, Pace, autocast, opt

@dataclass
class OracleConfig(frame.RunConfig):
    """the exhaustive oracle"""
    val_batches: int = opt(0, "search batches to score on (0: the run's own, so greedy's losses are reproduced); "
                              "more show the count at which greedy's decisions stop flipping", ">=0")
    draws: int = opt(200, "resamplings of the search batches for the bootstrap and the subsets", ">0")

def layers_of(mask):
    return [i for i in range(mask.bit_length()) if mask >> i & 1]

@torch.no_grad()
def score_layouts(model, students, batches, device="cpu", bf16=False, progress=None):
    """rows[mask][b]: tasks.batch_scores of the hybrid whose layers in `mask` (bit i: layer i
    linear) run their students, on batch b; every one of the 2^L layouts. Returns (rows, block
    forwards run). progress(b) is called after each batch."""
    blocks = model.transformer.h
    L = len(blocks)
    rows, forwards = [[None] * len(batches) for _ in range(2 ** L)], 0
    with autocast(device, bf16):
        for b, (x, y) in enumerate(batches):
            # a stack of (layer i, the layers before it that are linear, the hidden state entering
            # layer i): a node's two children (layer i full, layer i linear) are computed from
            # its one hidden state, so it is never recomputed; depth first, the stack holds at
            # most one waiting sibling per layer
            stack = [(0, 0, model.embed(x))]  # (B, T, C)
            while stack:
                i, mask, h = stack.pop()
                if i == L:
                    rows[mask][b] = tasks.batch_scores(*model.head(h, y), y)
                    continue
                with dtr.hybrid(blocks, [i], students):
                    linear = blocks[i](h)
                stack += [(i + 1, mask | 1 << i, linear), (i + 1, mask, blocks[i](h))]  # popped next: the full child
                forwards += 2
            if progress:
                progress(b)
    return rows, forwards

def metric_table(rows, metric):
    """Every layout's metric over all the batches, as tasks.reduce counts it."""
    return [tasks.reduce(r, metric) for r in rows]

def replay_greedy(rows, metric, idx=None):
    """Algorithm 1 replayed on the table (the same rule and tie-break as dtr.greedy_replace) over
    the batches `idx`: (the teacher's metric, the trajectory)."""
    L, sign, key = len(rows).bit_length() - 1, tasks.METRICS[metric], "val_" + metric
    P = lambda mask: tasks.reduce([rows[mask][b] for b in (range(len(rows[0])) if idx is None else idx)], metric)
    teacher, mask, trajectory = P(0), 0, []
    for k in range(1, L + 1):
        scores = {i: P(mask | 1 << i) for i in range(L) if not mask >> i & 1}
        best = min(scores, key=lambda i: sign * scores[i])
        mask |= 1 << best
        trajectory.append({"k": k, "layer": best, key: scores[best], "rel_change": scores[best] / teacher - 1})
    return teacher, trajectory

def per_k(search, test, order, metric):
    """For k = 0..L: the best layout on the search batches (what an exhaustive search would pick)
    and on the test batches (the true optimum there), and where greedy's layout ranks among the
    C(L, k) layouts of its size on each (1 = best; ties share a rank)."""
    sign, L = tasks.METRICS[metric], len(order)
    out = []
    for k in range(L + 1):
        masks = [m for m in range(2 ** L) if m.bit_count() == k]
        g = sum(1 << i for i in order[:k])
        best = lambda table: min(masks, key=lambda m: sign * table[m])
        rank = lambda table: 1 + sum(sign * table[m] < sign * table[g] for m in masks)
        show = lambda m: {"layers": layers_of(m), "search": search[m], "test": test[m]}
        out.append({"k": k, "n_layouts": len(masks), "greedy": {**show(g), "rank_search": rank(search), "rank_test": rank(test)},
                    "best_by_search": show(best(search)), "best_on_test": show(best(test))})
    return out

def noise(rows, metric, tolerance, draws, seed=0):
    """How much of greedy's order the search batches decide: per round of greedy on all of them,
    the winner's margin over the runner-up next to the paired standard error of that difference
    over batches; and greedy replayed over resampled batches (a bootstrap, n of n with
    replacement) and over subsets of fewer batches: how often the order and M_opt come out as on
    all of them."""
    n, sign = len(rows[0]), tasks.METRICS[metric]
    full = replay_greedy(rows, metric)
    order = [t["layer"] for t in full[1]]
    per_batch = lambda mask: torch.tensor([tasks.reduce([r], metric) for r in rows[mask]], dtype=torch.float64)
    rounds, mask = [], 0
    for k, winner in enumerate(order, 1):
        rest = [i for i in range(len(order)) if not mask >> i & 1 and i != winner]
        if rest:
            runner = min(rest, key=lambda i: sign * tasks.reduce(rows[mask | 1 << i], metric))
            diff = sign * (per_batch(mask | 1 << runner) - per_batch(mask | 1 << winner))  # > 0: the winner is better
            margin, se = diff.mean().item(), (diff.std() / n ** 0.5).item() if n > 1 else float("nan")
            # subtle: a tie (0 by 0) and one batch (no se) are no clear win, so not `margin < 2 se`
            rounds.append({"k": k, "winner": winner, "runner_up": runner, "margin": margin, "paired_se": se,
                           "within_2se": not margin > 2 * se})
        mask |= 1 << winner
    m_opt = lambda result: dtr.select_models(*result, tolerance, metric)[1]["linear_layers"]
    gen = random.Random(seed)

    def agreement(pick, size):
        same_order = same_opt = 0
        for _ in range(draws):
            result = replay_greedy(rows, metric, pick(size))
            same_order += [t["layer"] for t in result[1]] == order
            same_opt += m_opt(result) == m_opt(full)
        return {"n": size, "order_same": same_order / draws, "m_opt_same": same_opt / draws}

    sizes = sorted({s for s in (1, 2, 4, 8, 16, 32, 64) if s < n})
    return {"rounds": rounds, "within_2se": sum(r["within_2se"] for r in rounds),
            "bootstrap": agreement(lambda s: [gen.randrange(n) for _ in range(s)], n),
            "subsets": [agreement(lambda s: sorted(gen.sample(range(n), s)), s) for s in sizes]}

def greedy_forwards(order, n_batches):
    """Block forwards dtr.greedy_replace runs on n_batches: the teacher once, then each round the
    current hybrid once and each candidate from its own layer on."""
    L, linear = len(order), set()
    total = L
    for layer in order:
        total += L + sum(L - i for i in range(L) if i not in linear)
        linear.add(layer)
    return total * n_batches

def rounds_text(r):
    """Greedy's rounds within the noise, and those won by more, each round named in its group."""
    show = lambda within: ", ".join(f"k={x['k']} L{x['winner']} over L{x['runner_up']} by {x['margin']:.4f} (se {x['paired_se']:.4f})"
                                    for x in r["rounds"] if x["within_2se"] == within) or "none"
    return (f"{r['within_2se']} of {len(r['rounds'])} greedy rounds won by at most 2 paired standard errors over the "
            f"search batches (a tie, or one batch with no se, among them): {show(True)}; by more: {show(False)}")

def print_result(r):
    f = r["block_forwards"]
    print(f"oracle   {r['seconds']:.1f} s, greedy's search {r['greedy_seconds']:.1f} s on the same batches; "
          f"{f['oracle']:,} block forwards, {1 - f['oracle'] / f['unshared']:.0%} fewer than {f['unshared']:,} without "
          f"sharing prefixes; greedy's search ran {f['greedy_search']:,}"
          + (f"; greedy's search {r['metric']} reproduced to {r['greedy_reproduced']:.1e}" if "greedy_reproduced" in r else ""))
    print(f"oracle     k | greedy test {r['metric']:8s} rank / layouts | best on search: test | best on test")
    for p in r["per_k"][1:]:
        g = p["greedy"]
        print(f"oracle   {p['k']:3d} | {g['test']:18.4f} {g['rank_test']:5d} / {p['n_layouts']:<5d} (search rank {g['rank_search']}) | "
              f"{p['best_by_search']['test']:.4f} {p['best_by_search']['layers']} | {p['best_on_test']['test']:.4f} {p['best_on_test']['layers']}")
    print(f"noise    {rounds_text(r)}")
    print(f"noise    bootstrap over {r['batches']['search']} search batches: same order {r['bootstrap']['order_same']:.0%}, "
          f"same M_opt {r['bootstrap']['m_opt_same']:.0%}; fewer batches: " +
          ", ".join(f"{s['n']}: order {s['order_same']:.0%}, M_opt {s['m_opt_same']:.0%}" for s in r["subsets"]))

def run(args):
    device, bf16, cfg, report, model, students, (_, val, _) = frame.open_run(args)
    L, m = cfg.n_layer, report["metric"]
    if L > 16:
        raise DtrError(f"{args.run_dir} has {L} layers: 2^{L} layouts are too many to score one by one; the oracle takes up to 16")
    cfg = dataclasses.replace(cfg, val_batches=args.val_batches or cfg.val_batches)
    splits = {"search": tasks.lm_batches(cfg, val, device), "test": tasks.lm_batches(cfg, val, device, test=True)}
    order = [t["layer"] for t in report["trajectory"]]
    print("oracle   first greedy on the same search batches, for its cost")
    t0 = time.time()
    dtr.greedy_replace(model, students, splits["search"], device, bf16, metric=m)  # its cost, on the same machine and batches
    greedy_seconds = time.time() - t0
    total, t0, rows, forwards = sum(map(len, splits.values())), time.time(), {}, 0
    pace, step = Pace(0, total), iter(range(1, total + 1))
    print(f"oracle   {2 ** L} layouts x {total} batches ({len(splits['search'])} search, {len(splits['test'])} test)")
    for split, batches in splits.items():
        rows[split], f = score_layouts(model, students, batches, device, bf16, lambda b: print(
            f"oracle   {split} batch {b + 1}/{len(batches)} | {2 ** L} layouts | {pace(next(step))}", flush=True))
        forwards += f
    seconds = time.time() - t0
    search, test = (metric_table(rows[s], m) for s in ("search", "test"))
    result = {"metric": m, "n_layer": L, "n_layouts": 2 ** L, "batches": {s: len(b) for s, b in splits.items()},
              "run_val_batches": report["config"]["val_batches"],  # what greedy's order (the run's) was chosen on
              "seconds": seconds, "greedy_seconds": greedy_seconds,
              "block_forwards": {"oracle": forwards, "unshared": L * 2 ** L * total,
                                 "greedy_search": greedy_forwards(order, len(splits["search"]))},
              "per_k": per_k(search, test, order, m), **noise(rows["search"], m, report["tolerance"], args.draws, cfg.seed),
              "key": frame.result_key(report, bf16, **splits)}  # what it was computed from: layer_selectors.py checks it
    if cfg.val_batches == report["config"]["val_batches"]:  # the run's own search batches: greedy's numbers come back
        result["greedy_reproduced"] = max(abs(search[sum(1 << i for i in order[:t["k"]])] - t["val_" + m]) for t in report["trajectory"])
    print_result(result)
    frame.write_result({"key": result["key"], "metric": m, **{s: torch.tensor(r, dtype=torch.float64) for s, r in rows.items()}},
                       args, "oracle.pt")
    return frame.write_result(result, args, "oracle.json")

def markdown(r):
    """RESULTS.md's table: greedy against every layout of its size at each k, its cost, and the noise."""
    m, f = r["metric"], r["block_forwards"]
    out = [f"The exhaustive oracle (`python experiments/oracle.py <run folder>`): all {r['n_layouts']:,} layouts scored on "
           f"{r['batches']['search']} search and {r['batches']['test']} test batches in {r['seconds']:.0f} s "
           f"({f['oracle']:,} block forwards, {1 - f['oracle'] / f['unshared']:.0%} fewer than without sharing prefixes; "
           f"greedy's search: {r['greedy_seconds']:.0f} s, {f['greedy_search']:,} block forwards, same machine)"
           + (f"; greedy's layouts are the run's, chosen on its own {r['run_val_batches']} search batches"
              if r.get("run_val_batches", r["batches"]["search"]) != r["batches"]["search"] else "") + ".", "",
           f"| k | layouts | greedy: test {m} | rank on test | rank on search | best by search: test {m} | its layers "
           f"| best on test | its layers | greedy - best on test |", "|---" * 10 + "|"]
    for p in r["per_k"][1:]:
        g, s, t = p["greedy"], p["best_by_search"], p["best_on_test"]
        out.append(f"| {p['k']} | {p['n_layouts']} | {g['test']:.4f} | {g['rank_test']} | {g['rank_search']} | {s['test']:.4f} | "
                   f"{s['layers']} | {t['test']:.4f} | {t['layers']} | {g['test'] - t['test']:+.4f} |")
    b, sub = r["bootstrap"], r["subsets"]
    return out + ["", f"Noise: {rounds_text(r)}. Greedy replayed on "
                      f"{r['batches']['search']} search batches drawn with replacement gives the same order in "
                      f"{b['order_same']:.0%} and the same M_opt in {b['m_opt_same']:.0%} of draws; on fewer batches: "
                      + ", ".join(f"{x['n']}: order {x['order_same']:.0%}, M_opt {x['m_opt_same']:.0%}" for x in sub) + ".", ""]

def main(argv=None):
    frame.command(OracleConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
