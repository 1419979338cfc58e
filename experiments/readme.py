"""
Regenerate the results from finished runs, never typed by hand: the headline table, the full
tables, and the pictures (drawn by pictures.py).

    python experiments/readme.py out/shakespeare_char-cpu/gla,out/shakespeare_char-cpu/hedgehog,...
    python experiments/readme.py out/shakespeare_char-cpu/gla --update_project   # this checkout's own files

By default it writes RESULTS.md (the headline table, then the full tables) and assets/ beside the
run (for several runs, in the folder they share), or in --out. Only --update_project rewrites the
project's own RESULTS.md, README.md's headline table and assets/, in the checkout that holds this script.

Each run folder holds report.json (python dtr.py) and, where the experiments ran on it,
baselines.json, finetune.json, decode_bench.json, oracle.json, layer_selectors.json and distill_curve_*.json. Pictures are named after the run they show.
"""
import os
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import baselines
import bench_decode
import distill_curve
import dtr
import finetune
import layer_selectors
import oracle
import pictures
from plumbing import DtrError, load_file, opt

@dataclass
class ReadmeConfig:
    """the results to regenerate"""
    run_dirs: str = opt("", "comma-separated finished run folders, in the order to show them", positional=True)
    out: str = opt("", "folder to write RESULTS.md and assets/ into (default: beside the run, or the runs' shared folder)")
    update_project: bool = opt(False, "rewrite this checkout's own RESULTS.md, README.md's headline table and assets/ instead")

    def check(self):
        if self.out and self.update_project:
            raise DtrError("--out and --update_project name two places to write; give one of them")

# ---- reading the runs ----

# what the tables read from each file; a file from an older version of the project lacks some
NEEDS = {"report": ("config", "trajectory", "test", "metric", "tolerance", "m_best", "m_opt", "teacher", "distill", "timings_s"),
         "baselines": ("search", "test"), "finetune": ("iters", "teacher", "m_opt"), "decode_bench": ("rows", "batch"),
         "oracle": ("per_k", "rounds", "bootstrap"), "layer_selectors": ("test", "vs_greedy_test")}

def read(d, name, fix):
    """<d>/<name>.json, refused with one line if it comes from an older version of the project."""
    path = os.path.join(d, name + ".json")
    obj = load_file(path, fix)
    missing = [k for k in NEEDS[name] if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise DtrError(f"{path} comes from an older version of this project (it has no {', '.join(missing)}); {fix}")
    return obj

def load_runs(run_dirs):
    """One dict per run: its report, plus baselines / finetune / decode_bench where present, and
    the run's label and slug (which names its pictures)."""
    if not run_dirs:
        raise DtrError("give at least one finished run folder, e.g. out/shakespeare_char-cpu/gla")
    runs = []
    for d in run_dirs:
        r = read(d, "report", f"rerun the python dtr.py command that made {d} with this version to rewrite it"
                 if os.path.exists(os.path.join(d, "report.json")) else "run python dtr.py first; give a student's folder, "
                 "e.g. out/shakespeare_char-cpu/gla")
        for extra in ("baselines", "finetune", "decode_bench", "oracle", "layer_selectors"):
            if os.path.exists(os.path.join(d, extra + ".json")):
                script = "bench_decode" if extra == "decode_bench" else extra
                r[extra] = read(d, extra, f"rerun python experiments/{script}.py {d}")
        curves = sorted(f for f in os.listdir(d) if f.startswith("distill_curve_") and f.endswith(".json"))
        if curves:  # experiments/distill_curve.py, one file per --name
            r["distill_curves"] = {f[len("distill_curve_"):-len(".json")]: load_file(os.path.join(d, f), f"rerun python "
                                   f"experiments/distill_curve.py {d}", ("teacher_test_loss", "set", "runs")) for f in curves}
        copy_frac = r["config"].get("copy_frac", 0.0)
        r["label"] = f"`{r['student']}` student on {r['dataset']}" + (f", teacher trained with copy_frac {copy_frac}" if copy_frac else "")
        r["slug"] = os.path.relpath(d, "out").strip("./").replace(os.sep, "-")
        runs.append(r)
    return runs

def pct(loss, ref):
    return f"{100 * (loss / ref - 1):+.2f}%"

def conversion_share(r):
    """Distillation + greedy as a share of the teacher's training time (None if unknown)."""
    t, d = r["teacher"].get("train_s"), r["distill"].get("train_s")
    return (d + r["timings_s"]["greedy"]) / t if t and d else None

# ---- markdown ----

def gap(r):
    """The largest difference, in percentage points, between the search and the test batches'
    relative change against the teacher, over the trajectory."""
    m, test = r["metric"], r["test"]
    return max(abs(100 * s["rel_change"] - 100 * (test[s["k"]][m] / test[0][m] - 1)) for s in r["trajectory"])

def headline(runs, shown=(), more="Full tables: [RESULTS.md](RESULTS.md)."):
    """README's table: one line per run, on the held-out test batches (chosen on the search batches);
    then `more`, and the pictures `shown` (paths as the markdown links them)."""
    out = ["| run | command | teacher | all-linear | M_opt (tolerance) | M_best | conversion cost |", "|---" * 7 + "|"]
    for r in runs:
        test, L, share = r["test"], r["n_layer"], conversion_share(r)
        t, last = test[0]["loss"], test[-1]["loss"]
        m = lambda name: f"{len(r[name]['linear_layers'])}/{L} linear, {r[name]['test_loss']:.4f} ({pct(r[name]['test_loss'], t)})"
        out.append(f"| {r['label']} | `{r['command']}` | {t:.4f} | {last:.4f} ({pct(last, t)}) | {m('m_opt')} ({r['tolerance']:.0%}) "
                   f"| {m('m_best')} | " + (f"{100 * share:.0f}% of the teacher's training |" if share else "|"))
    gaps = [gap(r) for r in runs]
    return out + ["", f"Test loss on held-out batches that the search never saw; M_opt and M_best were chosen on "
                      f"the search batches, and their relative change against the teacher differs between the two "
                      f"sets by at most {max(gaps):.2f} percentage points over all k ({', '.join(f'{g:.2f}' for g in gaps)} "
                      f"per run). Measured on {'; '.join(sorted({r['machine'] for r in runs}))}, "
                      f"{', '.join(sorted({r['date'] for r in runs}))}. {more}", ""] + \
        [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in shown]

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

def run_markdown(r):
    """RESULTS.md's section for one run: the trajectory on search and test batches, M_best/M_opt,
    and each experiment on it."""
    t, L, m, test = r["timings_s"], r["n_layer"], r["metric"], r["test"]
    out = [f"### {r['label']} (preset `{r['config']['preset']}`)", "",
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
               tasks_markdown(r, r["tolerance"], L, m) + [""]
    if "decode_bench" in r:
        out += bench_decode.markdown(r["decode_bench"], r)
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

# ---- writing ----

def write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)

def fill(path, marker, lines):
    """Replace what sits between <!-- marker:start --> and <!-- marker:end --> in path, atomically."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    text = open(path).read()
    if start not in text or end not in text:
        raise DtrError(f"{path} has no {start} ... {end} markers to fill; restore them from git")
    head, rest = text.split(start)
    write(path, head + start + "\n" + "\n".join(lines) + "\n" + end + rest.split(end)[1])

def run(args):
    dirs = [d for d in args.run_dirs.split(",") if d]
    runs = load_runs(dirs)
    folder = frame.ROOT if args.update_project else args.out or os.path.commonpath([os.path.abspath(d) for d in dirs])
    paths = pictures.draw(runs, os.path.join(folder, "assets"))
    shown = [os.path.relpath(p, folder) for p in paths]  # as the markdown beside assets/ links them
    results = students_markdown(runs)
    for r in runs:
        results += run_markdown(r)
    results += [f"![{os.path.splitext(os.path.basename(p))[0]}]({p})" for p in shown]
    if args.update_project:
        fill(os.path.join(folder, "RESULTS.md"), "results", results)
        fill(os.path.join(folder, "README.md"), "headline", headline(runs, shown))
        written = [os.path.join(folder, "RESULTS.md"), os.path.join(folder, "README.md") + " (its headline table)"]
    else:
        head = headline(runs, more="The full tables follow.")
        write(os.path.join(folder, "RESULTS.md"), "\n".join(["# Results", ""] + head + results) + "\n")
        written = [os.path.join(folder, "RESULTS.md")]
    print(f"wrote {', '.join(written + paths)} from {len(runs)} run(s)"
          + ("" if args.update_project else "; the project's own files are untouched (--update_project rewrites them)"))

def main(argv=None):
    frame.command(ReadmeConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
