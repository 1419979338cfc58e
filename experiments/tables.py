"""
The results as markdown, from finished runs (experiments/readme.py reads them and writes the files;
pictures.py draws): the README's headline table, and RESULTS.md's section for each run with the
tables of each experiment that ran on it (each experiment's own markdown()). A change against the
teacher is shown as the console shows it (frame.change): a loss's in %, an accuracy's in points.
"""
import math
import os

import frame  # first: it puts the project's root on sys.path
import baselines
import bench_decode
import distill_curve
import dtr
import finetune
import layer_selectors
import oracle

def pct(loss, ref):
    return frame.change_text(loss, ref, "loss")

def conversion_share(r):
    """Distillation + greedy as a share of the teacher's training time (None if unknown)."""
    t, d = r["teacher"].get("train_s"), r["distill"].get("train_s")
    return (d + r["timings_s"]["greedy"]) / t if t and d else None

# ---- markdown ----

def name(path):
    return os.path.splitext(os.path.basename(path))[0]

def budget(r):
    """How M_opt was chosen: within the tolerance, or with --keep_full K full layers."""
    k = r["config"].get("keep_full", -1)
    return f"{k} full layer{'s' if k != 1 else ''}" if k >= 0 else f"tolerance {100 * r['tolerance']:g}%"

def gap(r):
    """The largest difference between the search and the test batches' change against the teacher
    (frame.change: of a loss in %, of an accuracy in points), over the trajectory."""
    m, test, teacher = r["metric"], r["test"], r["teacher"]["val_" + r["metric"]]
    return max(abs(frame.change(s["val_" + m], teacher, m) - frame.change(test[s["k"]][m], test[0][m], m)) for s in r["trajectory"])

def headline(runs, shown=(), more="Full tables: [RESULTS.md](RESULTS.md)."):
    """README's table: one line per run, on the held-out test batches (chosen on the search batches);
    then `more`, and the pictures `shown` (paths as the markdown links them)."""
    out = ["| run | command | teacher | all-linear | M_opt | M_best | conversion cost |", "|---" * 7 + "|"]
    for r in runs:
        test, L, share = r["test"], r["n_layer"], conversion_share(r)
        t, last = test[0]["loss"], test[-1]["loss"]
        m = lambda name: f"{len(r[name]['linear_layers'])}/{L} linear, {r[name]['test_loss']:.4f} ({pct(r[name]['test_loss'], t)})"
        out.append(f"| {r['label']} | `{r['command']}` | {t:.4f} | {last:.4f} ({pct(last, t)}) | {m('m_opt')} ({budget(r)}) "
                   f"| {m('m_best')} | " + (f"{100 * share:.0f}% of the teacher's training |" if share else "|"))
    gaps = [gap(r) for r in runs]
    return out + ["", f"Test loss on held-out batches that the search never saw; M_opt and M_best were chosen on "
                      f"the search batches, and their change against the teacher (a loss's in %, an accuracy's in points) "
                      f"differs between the two sets by at most {max(gaps):.2f} points over all k ({', '.join(f'{g:.2f}' for g in gaps)} "
                      f"per run). Measured on {'; '.join(sorted({r['machine'] for r in runs}))}, "
                      f"{', '.join(sorted({r['date'] for r in runs}))}. {more}", ""] + \
        ([f"Pictures: {', '.join(f'[{name(p)}]({p})' for p in shown)}.", ""] if shown else []) + \
        [f"![{name(p)}]({p})" for p in shown if name(p) == "m_opt-layers"]  # the overview: which layers stay full

def tasks_markdown(report, n_layer):
    """RESULTS.md's per-task tables, on the test batches, each task in its own metric P; for a
    multiple-choice task, its accuracy at every k with standard errors."""
    tasks, cross = report["tasks"], report["tasks_cross_eval"]
    metric = {n: t.get("metric", report["metric"]) for n, t in tasks.items()}
    row = lambda *cells: "| " + " | ".join(cells) + " |"
    rule = row(*["---"] * (len(tasks) + 1))

    def vs(p, name):  # against the task's teacher: a loss in %, an accuracy in points
        m = metric[name]
        return f"{p:.{4 if m == 'loss' else 3}f} ({frame.change_text(p, tasks[name]['test'][0][m], m, 1)})"
    out = [row(f"layer at M_opt ({budget(report)}), k = greedy round it went linear", *tasks), rule]
    for i in range(n_layer):
        ks = [next(t["k"] for t in r["trajectory"] if t["layer"] == i) for r in tasks.values()]
        out.append(row(f"L{i}", *(("linear" if i in r["m_opt"]["linear_layers"] else "**full**") + f" (k={k})"
                                  for r, k in zip(tasks.values(), ks))))
    out += [row("test metric: teacher -> M_opt", *(f"{metric[n]} {r['test'][0][metric[n]]:.{4 if metric[n] == 'loss' else 3}f} -> {vs(r['m_opt']['test_' + metric[n]], n)}"
                                                    for n, r in tasks.items())),
            row("its search and test scoring (s)", *(f"{r['seconds']:.0f}" if "seconds" in r else "" for r in tasks.values())), "",
            row("M_opt of (row) on (col), test", *(f"{c} ({metric[c]})" for c in cross["cols"])), rule]
    out += [row(name, *(vs(cross[metric[c]][i][j], c) for j, c in enumerate(cross["cols"]))) for i, name in enumerate(cross["rows"])]
    for name, t in tasks.items():
        if metric[name] == "loss" or not t.get("n"):
            continue
        m, n, unit = metric[name], t["n"], "item" if t.get("multiple_choice") else "token"  # (a token task's scored targets)
        se = lambda p, split: (p * (1 - p) / n[split]) ** 0.5 if n[split] else math.nan
        p0, s0 = t["test"][0][m], se(t["test"][0][m], "test")
        many = lambda k, word: f"{k:,} {word}{'' if k == 1 else 's'}"
        out += ["", f"`{name}`, searched by {m} on {many(n['search'], unit)}, tested on {many(n['test'], 'other')} (± one "
                    f"standard error, sqrt(p (1 - p) / n)" + ("" if unit == "item" else ", a lower bound: the tokens of one "
                    "window are not independent") + f"; a drop's is that of two independent accuracies, an upper bound for "
                    f"the same {unit}s):", "",
                f"| k | replaced | search {m} | test {m} | test drop vs teacher |", "|---" * 5 + "|",
                f"| 0 | - (teacher) | {t['teacher_' + m]:.3f} ± {se(t['teacher_' + m], 'search'):.3f} | {p0:.3f} ± {s0:.3f} | |"]
        for s_ in t["trajectory"]:
            p = t["test"][s_["k"]][m]
            out.append(f"| {s_['k']} | L{s_['layer']} | {s_['val_' + m]:.3f} ± {se(s_['val_' + m], 'search'):.3f} | "
                       f"{p:.3f} ± {se(p, 'test'):.3f} | {100 * (p - p0):+.1f} ± {100 * (se(p, 'test') ** 2 + s0 ** 2) ** 0.5:.1f} pt |")
        gap = max(abs((s_["val_" + m] - t["teacher_" + m]) - (t["test"][s_["k"]][m] - p0)) for s_ in t["trajectory"])
        out += ["", f"Search against test: the change against the teacher differs by at most {100 * gap:.1f} points over k. "
                    + (f"At this accuracy two hybrids 2 points apart need about {8 * p0 * (1 - p0) / 0.02 ** 2:,.0f} {unit}s "
                       f"to stand two standard errors apart (for 5 points: {8 * p0 * (1 - p0) / 0.05 ** 2:,.0f})." if 0 < p0 < 1 else
                       f"At the teacher's test {m} of {p0:.3f} the standard error is no measure of the noise.")]
    if "copy" in tasks:
        c, plain = tasks["copy"]["test"][0], tasks["copy"]["teacher_plain"]
        out += ["", f"Teacher on the copy passages (test): loss {c['loss']:.4f}, accuracy {c['accuracy']:.3f} on the "
                    f"second copy; loss {plain['loss']:.4f}, accuracy {plain['accuracy']:.3f} on the same tokens without "
                    f"the repeat" + (" (it gains nothing from the repeat)." if c["loss"] >= plain["loss"] else ".")]
    return out

def run_markdown(r):
    """RESULTS.md's section for one run: the trajectory on search and test batches, M_best/M_opt,
    and each experiment on it."""
    t, L, m, test = r["timings_s"], r["n_layer"], r["metric"], r["test"]
    other, teacher = "accuracy" if m == "loss" else "loss", r["teacher"]["val_" + m]  # the run's metric, and the other one
    out = [f"### {r['label']} (preset `{r['config']['preset']}`)", "",
           f"`{r['command']}` on {r['machine']}, {r['date']}: teacher {t['teacher']:.0f} s, distillation "
           f"{t['distill']:.0f} s, greedy {t['greedy']:.0f} s, total {t['total']:.0f} s"
           + ("" if t["teacher"] else f" (teacher reused: it trained in {r['teacher']['train_s'] or 0:.0f} s"
              f", distillation {r['distill']['train_s'] or 0:.0f} s)") + ".", "",
           f"| k | replaced | search {m} | vs teacher | test {m} | vs teacher | test {other} |", "|---" * 7 + "|",
           f"| 0 | - (teacher) | {teacher:.4f} | | {test[0][m]:.4f} | | {test[0][other]:.4f} |"]
    out += [f"| {s['k']} | L{s['layer']} | {s['val_' + m]:.4f} | {frame.change_text(s['val_' + m], teacher, m)} | "
            f"{test[s['k']][m]:.4f} | {frame.change_text(test[s['k']][m], test[0][m], m)} | {test[s['k']][other]:.4f} |"
            for s in r["trajectory"]]
    for name, sel in (("M_best", r["m_best"]), (f"M_opt ({budget(r)}, by search {m})", r["m_opt"])):
        full = [i for i in range(L) if i not in sel["linear_layers"]]
        out.append(f"\n**{name}**: {len(sel['linear_layers'])}/{L} layers linear, full attention kept in {full or 'none'}; "
                   f"search {m} {sel['val_' + m]:.4f}, test loss {sel['test_loss']:.4f}, test accuracy {sel['test_accuracy']:.4f}.")
    out += ["", f"Search against test: the change against the teacher ({'in %' if m == 'loss' else 'in points'}) differs "
                f"by at most {gap(r):.2f} points over k.", "",
            "Distillation, relative MSE per layer: " + ", ".join(f"L{i} {x:.3f}" for i, x in enumerate(r["distill"]["rel_mse"])), ""]
    if conversion_share(r):
        out += [f"Distillation + greedy took {100 * conversion_share(r):.0f}% of the teacher's training time.", ""]
    if "distill_curves" in r:
        out += distill_curve.markdown(r["distill_curves"], r["teacher"].get("train_s"))
    if "baselines" in r:
        out += baselines.markdown(r["baselines"])
    if "finetune" in r:
        out += finetune.markdown(r["finetune"])
    if "oracle" in r:
        out += oracle.markdown(r["oracle"])
    if "layer_selectors" in r:
        out += layer_selectors.markdown(r["layer_selectors"])
    if "tasks" in r:
        out += [f"One search per target task (`--task {r['config']['task']}`), same teacher and students, test batches:", ""] + \
               tasks_markdown(r, L) + [""]
    if "decode_bench" in r:
        out += bench_decode.markdown(r["decode_bench"], r)
    return out

SCORED_ON = ("dataset", "block_size", "batch_size", "val_batches", "metric")  # a run key's batches and metric

def students_markdown(runs):
    """The students side by side on one teacher (paper Fig. 3: does the order depend on the linear
    module?): distillation quality and cost, the greedy order, M_opt at 1% and 2%, and Spearman's
    rank correlation between the students' orders. Runs share a teacher when its weights are the
    same (readme.py's run key), whatever their folders are called, and are compared only when they
    were also searched and tested on the same batches by the same metric."""
    out, groups = [], {}
    for r in runs:
        groups.setdefault(tuple(r["key"][k] for k in ("teacher_sha256",) + SCORED_ON), []).append(r)
    for sha in dict.fromkeys(g[0] for g in groups):  # a teacher whose runs were scored on other batches: say so
        split = [g for g in groups if g[0] == sha]
        if len(split) > 1:
            out += [f"Runs on one teacher (weights sha256 {sha[:12]}) but scored on other batches, not compared: " + "; ".join(
                ", ".join(f"`{r['config']['out_dir']}/{r['student']}`" for r in groups[g]) + " with "
                + ", ".join(f"{k} {v}" for k, v in zip(SCORED_ON, g[1:])) for g in split) + ".", ""]
    for (sha, *_), rs in groups.items():
        if len(rs) < 2:
            continue
        L, folders = rs[0]["n_layer"], dict.fromkeys(f"`{r['config']['out_dir']}/teacher.pt`" for r in rs)
        out += [f"Students on the same teacher ({', '.join(folders)}, weights sha256 {sha[:12]}), test loss against the "
                f"teacher's {rs[0]['test'][0]['loss']:.4f}:", "",
                "| student | relative MSE per layer | greedy order | all-linear | M_opt at 1% | M_opt at 2% | distill ms/step | conversion / teacher time |",
                "|---" * 8 + "|"]
        for r in rs:
            order, test = [s["layer"] for s in r["trajectory"]], r["test"]
            m = r["metric"]
            teacher, step_s = r["teacher"]["val_" + m], r["distill"]["train_s"]
            ks = [len(dtr.select_models(teacher, r["trajectory"], tol, m)[1]["linear_layers"]) if math.isfinite(teacher) else 0
                  for tol in (0.01, 0.02)]  # (a teacher without a score keeps every layer full)
            share = conversion_share(r)
            out.append(f"| `{r['student']}` | {' '.join(f'{x:.3f}' for x in r['distill']['rel_mse'])} | "
                       f"{' '.join(f'L{i}' for i in order)} | {test[-1]['loss']:.4f} ({pct(test[-1]['loss'], test[0]['loss'])}) | "
                       + " | ".join(f"{k}/{L} linear, {pct(test[k]['loss'], test[0]['loss'])}" for k in ks)
                       + (f" | {1000 * step_s / r['config']['distill_iters']:.0f} | " if step_s is not None else " | | ")
                       + (f"{100 * share:.0f}% |" if share else "|"))
        order = lambda r: [s["layer"] for s in r["trajectory"]]
        pairs = [(a, b) for j, a in enumerate(rs) for b in rs[j + 1:]]
        out += ["", "Spearman correlation of the greedy orders: " + ", ".join(
            f"`{a['student']}`-`{b['student']}` {distill_curve.spearman(order(a), order(b)):+.2f}" for a, b in pairs) + ".", ""]
    return out
