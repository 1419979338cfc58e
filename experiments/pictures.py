"""
The pictures of the results, drawn with matplotlib from finished runs (loaded by readme.py, which
also writes the tables): per run, the placement baselines (paper Fig. 4), the task-specific
hybrids (§4) and decoding speed (Fig. 2) where it has them; for all runs, M_opt's layers (Fig. 3).
"""
import math
import os

import frame  # first: it puts the project's root on sys.path
from plumbing import writing
from tasks import METRICS

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
    with writing(path):
        fig.savefig(path + ".tmp", format="png", dpi=110)
        os.replace(path + ".tmp", path)
    plt.close(fig)
    return path

def log_scale(ax, x=False, y=True):
    """Log axes where the data drawn has a positive value; an axis of zeros or NaNs only stays linear
    (matplotlib cannot log-scale it)."""
    if x and math.isfinite(ax.dataLim.minposx):
        ax.set_xscale("log")
    if y and math.isfinite(ax.dataLim.minposy):
        ax.set_yscale("log")

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

def draw_selectors(plt, r, title, path):
    """Every selector's test metric against k, and the same minus a reference (the oracle's best on
    the test batches where it ran, else greedy's), where the small gaps show."""
    sel = r["layer_selectors"]
    test, m, ks = sel["test"], sel["metric"], range(1, r["n_layer"] + 1)
    curves = {name: test[name] for name in ("greedy", "importance", "uniform", "random_mean", "restore_one", "distill_error", "reverse_greedy")}
    if "oracle" in sel:
        curves.update({"oracle, best by search": sel["oracle"]["test_best_by_search"], "oracle, best on test": sel["oracle"]["test_best_on_test"]})
    ref_name = "oracle, best on test" if "oracle" in sel else "greedy"
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for n, (name, curve) in enumerate(curves.items()):
        style = dict(color="black", ls="--" if name.endswith("test") else ":") if name.startswith("oracle") else dict(color=f"C{n}")
        for ax, ys in zip(axes, (curve, [y - ref for y, ref in zip(curve, curves[ref_name])])):
            ax.plot(ks, ys, marker="o", lw=2.5 if name == "greedy" else 1.5, label=name, **style)
    notes = overlaps(curves)  # curves drawn on top of each other, said in the title
    axes[0].set(title="test batches" + "".join(f"\n{n}" for n in notes), xlabel="layers replaced by linear attention (k)", ylabel=f"test {m}", xticks=list(ks))
    axes[1].set(title=f"minus {ref_name}", xlabel="layers replaced by linear attention (k)", ylabel=f"test {m} difference", xticks=list(ks))
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Layer selectors (each chose on the search batches): {title}", fontsize=11)
    return save_figure(plt, fig, path)

def draw_tasks(plt, r, title, path):
    """Each task's metric vs k relative to its own teacher's, and which layers its M_opt keeps full."""
    tasks, tol, L = r["tasks"], r["tolerance"], r["n_layer"]
    names = list(tasks)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
    m = {name: t.get("metric", r["metric"]) for name, t in tasks.items()}  # each task in its own metric, worse upwards
    rel = {name: [METRICS[m[name]] * frame.change(s[m[name]], t["test"][0][m[name]], m[name]) for s in t["test"]]
           for name, t in tasks.items()}  # a loss in %, an accuracy in points (frame.change)
    for name, curve in rel.items():
        ax1.plot(range(L + 1), curve, marker="o", label=f"{name} ({m[name]})")
    ax1.plot([0, L], [100 * tol] * 2, color="gray", ls="--", label=f"tolerance {100 * tol:g}% (of a loss)")
    ax1.set(xlabel="layers replaced, in each task's greedy order (k)",
            ylabel="test metric vs the task's teacher\n(loss: %, accuracy: points; up: worse)",
            title="each task's own greedy search")
    fig.suptitle(f"Task-specific hybrids, paper §4: {title}", fontsize=11)
    if max((abs(x) for curve in rel.values() for x in curve if x == x), default=0) > 50:  # (x == x: not NaN)
        ax1.set_yscale("symlog", linthresh=5)  # a task whose loss explodes would flatten the others
    ax1.legend(fontsize=8)
    full = [[i not in tasks[n]["m_opt"]["linear_layers"] for n in names] for i in range(L)]  # (layer, task)
    ax2.imshow(full, cmap="Greys", vmin=0, vmax=1.6, aspect="auto")
    for i, row in enumerate(full):
        for j, f in enumerate(row):
            ax2.text(j, i, "full" if f else "linear", ha="center", va="center", color="white" if f else "black")
    ax2.set(xticks=range(len(names)), xticklabels=names, yticks=range(L), yticklabels=[f"L{i}" for i in range(L)],
            title=f"each task's M_opt (tolerance {100 * tol:g}%)")
    return save_figure(plt, fig, path)

def draw_decode(plt, r, title, path):
    """Decoding tokens/s (1 sequence solid, batch dashed) and cache memory against context."""
    bench = r["decode_bench"]
    batch, L, modes = bench["batch"], bench["n_layer"], ["eager"] + (["compiled"] if bench.get("compiled") else [])
    students = bench.get("students", ["all_linear"])  # (a file from before --students: one, "all_linear")
    own = bench.get("own_student", "all_linear")
    same = len(r["m_opt"]["linear_layers"]) == L and own in students  # M_opt is that all-linear model: one curve, said so
    names = {"teacher": "teacher (full attention)"}
    names.update({s: ("all-linear" if s == "all_linear" else f"all-linear {s}") + (" = M_opt" if same and s == own else "")
                  for s in students})
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
        ax.set(xlabel="context (tokens)", ylabel="decoded tokens/s", title=f"decoding, {mode}")
        log_scale(ax, x=True)
        ax.legend(fontsize=7)
    axes[-1].set(xlabel="context (tokens)", ylabel="cache MiB", title="cache memory")
    log_scale(axes[-1], x=True)
    axes[-1].legend(fontsize=7)
    contexts = sorted({w["context"] for w in bench["rows"]})
    for ax in axes:  # the measured contexts as plain numbers
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.set_xticks([], minor=True)
    fig.suptitle(f"Decoding, paper Fig. 2: {title} ({bench['machine']})", fontsize=10)
    return save_figure(plt, fig, path)

def draw_distill(plt, r, title, path):
    """Left: the all-linear test loss against the conversion time (distillation + greedy) of each
    step budget, a colour per setting and a marker per student; right: each layer's relative MSE
    against the steps, for the setting with the most budgets."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    marker = {"gla": "o", "gdn": "s", "hedgehog": "^"}
    for n, (name, c) in enumerate(r["distill_curves"].items()):
        for student in dict.fromkeys(x["student"] for x in c["runs"]):
            runs = [x for x in c["runs"] if x["student"] == student]
            ax1.plot([x["distill_s"] + x["greedy_s"] for x in runs],
                     [frame.change(x["all_linear_test_loss"], c["teacher_test_loss"], "loss") for x in runs],
                     marker=marker[student], color=plt.cm.tab20(n % 20), label=f"{student}, {name}")  # 20 colours
    name, c = max(r["distill_curves"].items(), key=lambda kv: len(kv[1]["runs"]))
    for m, student in enumerate(dict.fromkeys(x["student"] for x in c["runs"])):
        runs = [x for x in c["runs"] if x["student"] == student]
        for i in range(len(runs[0]["rel_mse"])):
            ax2.plot([x["steps"] for x in runs], [x["rel_mse"][i] for x in runs], marker=marker[student],
                     ls=("-", ":", "--")[m % 3], color=f"C{i}", label=f"{student} L{i}")
    ax1.axhline(1.0, color="gray", ls=":", label="1%")
    log_scale(ax1)
    ax1.set(xlabel="distillation + greedy (s)", ylabel="all-linear test loss vs teacher (%)",
            title="quality against conversion time")
    ax2.set(xlabel="distillation steps", ylabel="relative MSE (held out)", title=f"per layer ({name})")
    log_scale(ax2, x=True)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(f"Distillation (BLD, paper §3.1): {title}", fontsize=10)
    return save_figure(plt, fig, path)

def draw(runs, folder):
    """Per run: <slug>-baselines.png, -selectors.png, -tasks.png, -distill.png, -decode.png where it has them; for all
    runs, m_opt-layers.png. Returns the paths."""
    plt = pyplot()
    if plt is None:
        return []
    with writing(folder):
        os.makedirs(folder, exist_ok=True)
    paths = []
    for r in runs:
        title, ks, L = r["label"].replace("`", ""), range(1, r["n_layer"] + 1), r["n_layer"]
        if "baselines" in r:
            fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
            for ax, split in zip(axes, ("search", "test")):
                b = r["baselines"][split]
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
        if "layer_selectors" in r:
            paths.append(draw_selectors(plt, r, title, os.path.join(folder, f"{r['slug']}-selectors.png")))
        if "tasks" in r:
            paths.append(draw_tasks(plt, r, title, os.path.join(folder, f"{r['slug']}-tasks.png")))
        if "distill_curves" in r:
            paths.append(draw_distill(plt, r, title, os.path.join(folder, f"{r['slug']}-distill.png")))
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
    ax.set_yticklabels([f"{r['label'].replace('`', '').replace(' student on', ',')} ({r['tolerance']:.0%})" for r in runs])
    paths.append(save_figure(plt, fig, os.path.join(folder, "m_opt-layers.png")))
    return paths

