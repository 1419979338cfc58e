"""
Regenerate the results from finished runs: the full tables in RESULTS.md, the headline table in
README.md, and the pictures in assets/, never typed by hand.

    python experiments/readme.py out/shakespeare_char-cpu/gla,out/shakespeare_char-cpu/hedgehog,...

Each run folder holds report.json (python dtr.py) and, where the experiments ran on it,
baselines.json, finetune.json and decode_bench.json. Pictures are named after the run they show.
"""
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # dtr.py sits one folder up
import dtr  # noqa: E402
from baselines import greedy_verdict  # noqa: E402
from plumbing import DtrError, cli, load_file, opt, parse_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@dataclass
class ReadmeConfig:
    """the results to regenerate"""
    run_dirs: str = opt("", "comma-separated finished run folders, in the order to show them", positional=True)

# ---- reading the runs ----

def load_runs(run_dirs):
    """One dict per run: its report, plus baselines / finetune / decode_bench where present."""
    if not run_dirs:
        raise DtrError("give at least one finished run folder, e.g. out/shakespeare_char-cpu/gla")
    runs = []
    for d in run_dirs:
        r = load_file(os.path.join(d, "report.json"), f"run python dtr.py for {d} first", ("config", "trajectory"))
        for extra in ("baselines", "finetune", "decode_bench"):
            path = os.path.join(d, extra + ".json")
            if os.path.exists(path):
                r[extra] = load_file(path, f"delete it and rerun experiments/{extra}.py")
        r["slug"] = os.path.relpath(d, "out").strip("./").replace(os.sep, "-")  # names its pictures
        runs.append(r)
    return runs

def label(r):
    copy_frac = r["config"].get("copy_frac", 0.0)
    return f"`{r['student']}` student on {r['dataset']}" + (f", teacher trained with copy_frac {copy_frac}" if copy_frac else "")

def pct(loss, ref):
    return f"{100 * (loss / ref - 1):+.2f}%"

def conversion_share(r):
    """Distillation + greedy as a share of the teacher's training time (None if unknown)."""
    t, d = r["teacher"].get("train_s"), r["distill"].get("train_s")
    return (d + r["timings_s"]["greedy"]) / t if t and d else None

# ---- markdown ----

def headline(runs, pictures=()):
    """README's table: one line per run, on the held-out test batches (chosen on the search batches)."""
    out = ["| run | command | teacher | all-linear | M_opt (tolerance) | M_best | conversion cost |", "|---" * 7 + "|"]
    for r in runs:
        test, L, share = r["test"], r["n_layer"], conversion_share(r)
        t, last = test[0]["loss"], test[-1]["loss"]
        m = lambda name: f"{len(r[name]['linear_layers'])}/{L} linear, {r[name]['test_loss']:.4f} ({pct(r[name]['test_loss'], t)})"
        out.append(f"| {label(r)} | `{r['command']}` | {t:.4f} | {last:.4f} ({pct(last, t)}) | {m('m_opt')} ({r['tolerance']:.0%}) "
                   f"| {m('m_best')} | " + (f"{100 * share:.0f}% of the teacher's training |" if share else "|"))
    gaps = [gap(r) for r in runs]
    return out + ["", f"Test loss on held-out batches that the search never saw; M_opt and M_best were chosen on "
                      f"the search batches, and their relative change against the teacher differs between the two "
                      f"sets by at most {max(gaps):.2f} percentage points over all k ({', '.join(f'{g:.2f}' for g in gaps)} "
                      f"per run). Measured on {'; '.join(sorted({r['machine'] for r in runs}))}, "
                      f"{', '.join(sorted({r['date'] for r in runs}))}. Full tables: [RESULTS.md](RESULTS.md).", ""] + \
        [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in pictures]

def gap(r):
    """The largest difference, in percentage points, between the search and the test batches'
    relative change against the teacher, over the trajectory."""
    m, test = r["metric"], r["test"]
    return max(abs(100 * s["rel_change"] - 100 * (test[s["k"]][m] / test[0][m] - 1)) for s in r["trajectory"])

def run_markdown(r):
    """RESULTS.md's section for one run: the trajectory on search and test batches, M_best/M_opt,
    and each experiment on it."""
    t, L, m, test = r["timings_s"], r["n_layer"], r["metric"], r["test"]
    out = [f"### {label(r)} (preset `{r['config']['preset']}`)", "",
           f"`{r['command']}` on {r['machine']}, {r['date']}: teacher {t['teacher']:.0f} s, distillation "
           f"{t['distill']:.0f} s, greedy {t['greedy']:.0f} s, total {t['total']:.0f} s"
           + ("" if t["teacher"] else f" (teacher reused: it trained in {r['teacher']['train_s'] or 0:.0f} s"
              f", distillation {r['distill']['train_s'] or 0:.0f} s)") + ".", "",
           f"| k | replaced | search {m} | vs teacher | test loss | vs teacher | test accuracy |", "|---" * 7 + "|",
           f"| 0 | - (teacher) | {r['teacher']['val_' + m]:.4f} | | {test[0]['loss']:.4f} | | {test[0]['accuracy']:.4f} |"]
    out += [f"| {s['k']} | L{s['layer']} | {s['val_' + m]:.4f} | {100 * s['rel_change']:+.2f}% | {test[s['k']]['loss']:.4f} | "
            f"{pct(test[s['k']]['loss'], test[0]['loss'])} | {test[s['k']]['accuracy']:.4f} |" for s in r["trajectory"]]
    for name, sel in (("M_best", r["m_best"]), (f"M_opt (tolerance {r['tolerance']:.0%}, by search {m})", r["m_opt"])):
        full = [i for i in range(L) if i not in sel["linear_layers"]]
        out.append(f"\n**{name}**: {len(sel['linear_layers'])}/{L} layers linear, full attention kept in {full or 'none'}; "
                   f"search {m} {sel['val_' + m]:.4f}, test loss {sel['test_loss']:.4f}, test accuracy {sel['test_accuracy']:.4f}.")
    out += ["", f"Search against test: the relative change against the teacher differs by at most {gap(r):.2f} "
                f"percentage points over k.", "",
            "Distillation, relative MSE per layer: " + ", ".join(f"L{i} {x:.3f}" for i, x in enumerate(r["distill"]["rel_mse"])), ""]
    if conversion_share(r):
        out += [f"Distillation + greedy took {100 * conversion_share(r):.0f}% of the teacher's training time.", ""]
    for split, b in r.get("baselines", {}).items():
        out += [f"Placement baselines (`python experiments/baselines.py <run folder>`), loss on the {split} batches at k linear layers:", "",
                "| placement | " + " | ".join(f"k={k}" for k in range(1, L + 1)) + " | mean |", "|---" * (L + 2) + "|"]
        out += [f"| {n} | " + " | ".join(f"{x:.4f}" for x in b[n]) + f" | {sum(b[n]) / L:.4f} |"
                for n in ("greedy", "uniform", "importance", "random_mean")]
        out += ["", f"Placement on the {split} batches: {greedy_verdict(b)} (random: mean of {len(b['random_orders'])} orders).", ""]
    if "finetune" in r:
        f = r["finetune"]
        out += [f"Finetuning {f['iters']} steps end to end (`python experiments/finetune.py <run folder>`), test loss: "
                f"teacher {f['teacher']['before']:.4f} -> {f['teacher']['after']:.4f}, "
                f"M_opt {f['m_opt']['before']:.4f} -> {f['m_opt']['after']:.4f}.", ""]
    if "tasks" in r:
        out += [f"One search per target task (`--task {r['config']['task']}`), same teacher and students, test batches:", ""] + \
               tasks_markdown(r, r["tolerance"], L, m) + [""]
    if "decode_bench" in r:
        out += decode_markdown(r["decode_bench"], r)
    return out

def tasks_markdown(report, tolerance, n_layer, metric="loss"):
    """RESULTS.md's per-task tables, on the test batches."""
    tasks, cross = report["tasks"], report["tasks_cross_eval"]
    row = lambda *cells: "| " + " | ".join(cells) + " |"
    rule = row(*["---"] * (len(tasks) + 1))
    vs = lambda p, name: f"{p:.4f} ({100 * (p / tasks[name]['test'][0][metric] - 1):+.1f}%)"
    out = [row(f"layer at M_opt (tolerance {tolerance:.0%}), k = greedy round it went linear", *tasks), rule]
    for i in range(n_layer):
        ks = [next(t["k"] for t in r["trajectory"] if t["layer"] == i) for r in tasks.values()]
        out.append(row(f"L{i}", *(("linear" if i in r["m_opt"]["linear_layers"] else "**full**") + f" (k={k})"
                                  for r, k in zip(tasks.values(), ks))))
    out += [row(f"test {metric}: teacher -> M_opt", *(f"{r['test'][0][metric]:.4f} -> {vs(r['m_opt']['test_' + metric], n)}"
                                                       for n, r in tasks.items())), "",
            row(f"M_opt of (row), test {metric} on (col)", *cross["cols"]), rule]
    out += [row(name, *map(vs, scores, cross["cols"])) for name, scores in zip(cross["rows"], cross[metric])]
    if "copy" in tasks:
        c, plain = tasks["copy"]["test"][0], tasks["copy"]["teacher_plain"]
        out += ["", f"Teacher on the copy passages (test): loss {c['loss']:.4f}, accuracy {c['accuracy']:.3f} on the "
                    f"second copy; loss {plain['loss']:.4f}, accuracy {plain['accuracy']:.3f} on the same tokens without "
                    f"the repeat" + (" (it gains nothing from the repeat)." if c["loss"] >= plain["loss"] else ".")]
    return out

def students_markdown(runs):
    """The students side by side on one teacher (paper Fig. 3: does the order depend on the linear
    module?): distillation quality and cost, the greedy order, M_opt at 1% and 2%, and Spearman's
    rank correlation between the students' orders."""
    out, groups = [], {}
    for r in runs:
        groups.setdefault(r["config"]["out_dir"], []).append(r)
    for folder, rs in groups.items():
        if len(rs) < 2:
            continue
        L = rs[0]["n_layer"]
        out += [f"Students on the same teacher (`{folder}/teacher.pt`), test loss against the teacher's "
                f"{rs[0]['test'][0]['loss']:.4f}:", "",
                "| student | relative MSE per layer | greedy order | all-linear | M_opt at 1% | M_opt at 2% | distill ms/step | conversion / teacher time |",
                "|---" * 8 + "|"]
        for r in rs:
            order, test = [s["layer"] for s in r["trajectory"]], r["test"]
            m = r["metric"]
            ks = [len(dtr.select_models(r["teacher"]["val_" + m], r["trajectory"], tol, m)[1]["linear_layers"]) for tol in (0.01, 0.02)]
            share = conversion_share(r)
            out.append(f"| `{r['student']}` | {' '.join(f'{x:.3f}' for x in r['distill']['rel_mse'])} | "
                       f"{' '.join(f'L{i}' for i in order)} | {test[-1]['loss']:.4f} ({pct(test[-1]['loss'], test[0]['loss'])}) | "
                       + " | ".join(f"{k}/{L} linear, {pct(test[k]['loss'], test[0]['loss'])}" for k in ks)
                       + f" | {1000 * r['distill']['train_s'] / r['config']['distill_iters']:.0f} | "
                       + (f"{100 * share:.0f}% |" if share else "|"))
        rank = lambda r: [[s["layer"] for s in r["trajectory"]].index(i) for i in range(L)]  # the round each layer went
        pairs = [(a, b) for j, a in enumerate(rs) for b in rs[j + 1:]]
        rho = lambda a, b: 1 - 6 * sum((x - y) ** 2 for x, y in zip(rank(a), rank(b))) / (L * (L * L - 1))
        out += ["", "Spearman correlation of the greedy orders: " +
                ", ".join(f"`{a['student']}`-`{b['student']}` {rho(a, b):+.2f}" for a, b in pairs) + ".", ""]
    return out

def decode_markdown(bench, r):
    batch, L = bench["batch"], bench["n_layer"]
    speeds = [("decode_tok_s", "eager, 1 sequence"), (f"decode_tok_s_batch{batch}", f"eager, batch {batch}")]
    if bench.get("compiled"):
        speeds += [(key + "_compiled", label.replace("eager", "compiled")) for key, label in speeds]
    out = [f"Decoding speed and cache memory ({L} layers, {bench['n_embd']} wide, {bench['new_tokens']} new tokens, "
           f"median of {bench['repeats']} runs, {bench['machine']}):", "",
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
    for name, k in (("all_linear", L), ("m_opt", len(r["m_opt"]["linear_layers"]))):
        out += ["", f"{name} ({k}/{L} layers linear) against the teacher, same run:", "",
                "| context | " + " | ".join(f"speed-up, {label}" for label, _, _ in ratios) + " | cache smaller by |",
                "|---" * (len(ratios) + 2) + "|"]
        out += [f"| {n} | " + " | ".join(f"{tok_s(by[name, n], key, best) / tok_s(by['teacher', n], key, best):.1f}x"
                                         for _, key, best in ratios)
                + f" | {by['teacher', n]['cache_bytes'] / by[name, n]['cache_bytes']:.0f}x |" for n in sorted({c for _, c in by})]
    return out + [""]

# ---- pictures ----

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

def save_figure(plt, fig, path):
    fig.tight_layout()
    fig.savefig(path + ".tmp", format="png", dpi=110)
    os.replace(path + ".tmp", path)
    plt.close(fig)
    return path

def overlaps(curves):
    """Notes for curves drawn on top of each other, so that none hides silently: 'b = a at k = ...'."""
    names, notes = list(curves), []
    same = lambda x, y: abs(x - y) <= 1e-6 * abs(y)
    for j, b in enumerate(names):
        for a in names[:j]:
            ks = [k + 1 for k, (x, y) in enumerate(zip(curves[a], curves[b])) if same(x, y)]
            if len(ks) > len(curves[b]) // 2:  # mostly hidden
                notes.append(f"{b} = {a}" + (" at every k" if len(ks) == len(curves[b]) else f" at k = {', '.join(map(str, ks))}"))
                break
    return notes

def draw(runs, folder):
    """Per run: <slug>-baselines.png, <slug>-tasks.png, <slug>-decode.png where it has them; for all
    runs, m_opt-layers.png. Returns the paths."""
    plt = pyplot()
    if plt is None:
        return []
    os.makedirs(folder, exist_ok=True)
    paths = []
    for r in runs:
        title, ks, L = label(r).replace("`", ""), range(1, r["n_layer"] + 1), r["n_layer"]
        if "baselines" in r:
            fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
            for ax, (split, b) in zip(axes, r["baselines"].items()):
                for name, style in (("uniform", ":"), ("importance", "--"), ("greedy", "-")):
                    ax.plot(ks, b[name], marker="o", ls=style, lw=2.5 if name == "greedy" else 1.5, label=name, zorder=3)
                ax.errorbar(ks, b["random_mean"], yerr=b["random_std"], marker="o", capsize=3,
                            label=f"random (mean, std of {len(b['random_orders'])})")
                ax.axhline(r["test"][0]["loss"] if split == "test" else r["teacher"]["val_loss"], color="gray", ls="--", label="teacher")
                notes = overlaps({n: b[n] for n in ("greedy", "importance", "uniform", "random_mean")})
                ax.set(title=f"{split} batches" + "".join(f"\n{n}" for n in notes),
                       xlabel="layers replaced by linear attention (k)", ylabel="loss", xticks=list(ks))
                ax.legend(fontsize=8)
            fig.suptitle(f"Placement, paper Fig. 4: {title}", fontsize=11)
            paths.append(save_figure(plt, fig, os.path.join(folder, f"{r['slug']}-baselines.png")))
        if "tasks" in r:
            paths.append(draw_tasks(plt, r, title, os.path.join(folder, f"{r['slug']}-tasks.png")))
        if "decode_bench" in r:
            paths.append(draw_decode(plt, r, title, os.path.join(folder, f"{r['slug']}-decode.png")))
    L = max(r["n_layer"] for r in runs)
    fig, ax = plt.subplots(figsize=(5 + 0.9 * L, 1.4 + 0.5 * len(runs)))
    grid = [[float("nan") if i >= r["n_layer"] else 0.0 if i in r["m_opt"]["linear_layers"] else 1.0 for i in range(L)] for r in runs]
    ax.imshow(grid, cmap="Blues", vmin=-0.5, vmax=1.5, aspect="auto")
    for row, cells in enumerate(grid):
        for i, full in enumerate(cells):
            if full == full:  # not nan
                ax.text(i, row, "full" if full else "linear", ha="center", va="center", fontsize=8)
    ax.set(xticks=range(L), xticklabels=[f"L{i}" for i in range(L)], yticks=range(len(runs)), xlabel="layer",
           title="M_opt of each run: which layers keep full attention (paper Fig. 3)")
    ax.set_yticklabels([f"{label(r).replace('`', '').replace(' student on', ',')} ({r['tolerance']:.0%})" for r in runs])
    paths.append(save_figure(plt, fig, os.path.join(folder, "m_opt-layers.png")))
    return paths

def draw_tasks(plt, r, title, path):
    """Each task's loss vs k relative to its own teacher, and which layers its M_opt keeps full."""
    tasks, tol, L = r["tasks"], r["tolerance"], r["n_layer"]
    names = list(tasks)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    m = r["metric"]
    rel = {name: [100 * (s[m] / t["test"][0][m] - 1) for s in t["test"]] for name, t in tasks.items()}  # k = 0..L
    for name, curve in rel.items():
        ax1.plot(range(L + 1), curve, marker="o", label=name)
    ax1.plot([0, L], [100 * tol * dtr.METRICS[m]] * 2, color="gray", ls="--", label=f"tolerance {tol:.0%}")
    ax1.set(xlabel="layers replaced, in each task's greedy order (k)", ylabel=f"test {m} vs the task's teacher (%)",
            title="each task's own greedy search")
    fig.suptitle(f"Task-specific hybrids, paper §4: {title}", fontsize=11)
    if max(abs(x) for curve in rel.values() for x in curve) > 50:
        ax1.set_yscale("symlog", linthresh=5)  # a task whose loss explodes would flatten the others
    ax1.legend(fontsize=8)
    full = [[i not in tasks[n]["m_opt"]["linear_layers"] for n in names] for i in range(L)]  # (layer, task)
    ax2.imshow(full, cmap="Greys", vmin=0, vmax=1.6, aspect="auto")
    for i, row in enumerate(full):
        for j, f in enumerate(row):
            ax2.text(j, i, "full" if f else "linear", ha="center", va="center", color="white" if f else "black")
    ax2.set(xticks=range(len(names)), xticklabels=names, yticks=range(L), yticklabels=[f"L{i}" for i in range(L)],
            title=f"each task's M_opt (tolerance {tol:.0%})")
    return save_figure(plt, fig, path)

def draw_decode(plt, r, title, path):
    """Decoding tokens/s (1 sequence solid, batch dashed) and cache memory against context."""
    bench = r["decode_bench"]
    batch, L, modes = bench["batch"], bench["n_layer"], ["eager"] + (["compiled"] if bench.get("compiled") else [])
    same = len(r["m_opt"]["linear_layers"]) == L  # M_opt is the all-linear model: one curve, said so
    names = {"teacher": "teacher (full attention)", "all_linear": "all-linear" + (" = M_opt" if same else "")}
    if not same:
        names["m_opt"] = f"M_opt ({len(r['m_opt']['linear_layers'])}/{L} linear)"
    fig, axes = plt.subplots(1, len(modes) + 1, figsize=(5.2 * (len(modes) + 1), 4.2))
    for n, (name, shown) in enumerate(names.items()):
        rows = [w for w in bench["rows"] if w["model"] == name]
        ctx = [w["context"] for w in rows]
        for ax, mode in zip(axes, modes):
            tail = "" if mode == "eager" else "_compiled"
            ax.plot(ctx, [w["decode_tok_s" + tail] for w in rows], marker="o", color=f"C{n}", label=f"{shown}, 1 sequence")
            ax.plot(ctx, [w[f"decode_tok_s_batch{batch}" + tail] for w in rows], marker="s", ls="--", color=f"C{n}",
                    label=f"{shown}, batch {batch}")
        axes[-1].plot(ctx, [w["cache_bytes"] / 2**20 for w in rows], marker="o", color=f"C{n}", label=shown)
    for ax, mode in zip(axes, modes):
        ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="decoded tokens/s", title=f"decoding, {mode}")
        ax.legend(fontsize=7)
    axes[-1].set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="cache MiB", title="cache memory")
    axes[-1].legend(fontsize=7)
    contexts = sorted({w["context"] for w in bench["rows"]})
    for ax in axes:  # the measured contexts as plain numbers
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.set_xticks([], minor=True)
    fig.suptitle(f"Decoding, paper Fig. 2: {title} ({bench['machine']})", fontsize=10)
    return save_figure(plt, fig, path)

# ---- writing ----

def fill(path, marker, lines):
    """Replace what sits between <!-- marker:start --> and <!-- marker:end --> in path, atomically."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = open(path).read()
    if start not in text or end not in text:
        raise DtrError(f"{path} has no {start} ... {end} markers to fill; restore them from git")
    head, rest = text.split(start)
    with open(path + ".tmp", "w") as f:
        f.write(head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end)[1])
    os.replace(path + ".tmp", path)

def run(args):
    runs = load_runs([d for d in args.run_dirs.split(",") if d])
    pictures = [os.path.relpath(p, ROOT) for p in draw(runs, os.path.join(ROOT, "assets"))]
    results = students_markdown(runs)
    for r in runs:
        results += run_markdown(r)
    results += [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in pictures]
    fill(os.path.join(ROOT, "RESULTS.md"), "results", results)
    fill(os.path.join(ROOT, "README.md"), "headline", headline(runs, pictures))
    print(f"rewrote RESULTS.md and README.md's headline from {len(runs)} run(s); pictures: {', '.join(pictures)}")

def main(argv=None):
    cli(run, lambda a: parse_config(ReadmeConfig, a, __doc__), argv)

if __name__ == "__main__":
    main()
