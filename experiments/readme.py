"""
Regenerate the results from finished runs, never typed by hand: the headline table, the full
tables, and the pictures (drawn by pictures.py).

    python experiments/readme.py out/shakespeare_char-cpu/gla,out/shakespeare_char-cpu/hedgehog,...
    python experiments/readme.py out/shakespeare_char-cpu/gla --update_project   # this checkout's own files

By default it writes RESULTS.md (the headline table, then the full tables) and assets/ into the
run's folder (for several runs, into the folder they share), or into --out; never into the checkout. Only --update_project rewrites the
project's own RESULTS.md, README.md's headline table and assets/, in the checkout that holds this script.

Each run folder holds report.json and students.pt (python dtr.py) and, where the experiments ran on it,
baselines.json, finetune.json, decode_bench.json, oracle.json, layer_selectors.json and distill_curve_*.json. Pictures are named after the run they show.
Each experiment's file is shown only if it was computed from this run (frame.run_key: its teacher's and
students' weights, its batches' settings, its metric, greedy's order and M_opt); otherwise it is refused,
naming the difference. Runs are compared side by side where they share a teacher (its weights, not its folder).
"""
import os
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import pictures
import tables
from plumbing import DtrError, load_file, opt, writing

@dataclass
class ReadmeConfig:
    """the results to regenerate"""
    run_dirs: str = opt("", "comma-separated finished run folders, in the order to show them", positional=True)
    out: str = opt("", "folder to write RESULTS.md and assets/ into (default: the run's folder, or the runs' shared folder)")
    update_project: bool = opt(False, "rewrite this checkout's own RESULTS.md, README.md's headline table and assets/ instead")

    def check(self):
        if self.out and self.update_project:
            raise DtrError("--out and --update_project name two places to write; give one of them")

# ---- reading the runs ----

# what the tables read from each file; a file from an older version of the project lacks some
NEEDS = {"report": ("config", "trajectory", "test", "metric", "tolerance", "m_best", "m_opt", "teacher", "distill", "timings_s"),
         "baselines": ("key", "search", "test"), "finetune": ("key", "iters", "teacher", "m_opt"),
         "decode_bench": ("key", "rows", "batch"), "oracle": ("key", "per_k", "rounds", "bootstrap"),
         "layer_selectors": ("key", "test", "vs_greedy_test"), "distill_curve": ("key", "teacher_test_loss", "set", "runs")}
# what a distillation curve depends on: the teacher and the batches, not the run's students or search
CURVE_KEY = ("teacher_sha256", "dataset", "block_size", "batch_size", "val_batches")

def read(d, name, fix, key=None):
    """<d>/<name>.json, refused with one line if it comes from an older version of the project, or
    was computed from another run than `key` says (the fields of key only)."""
    path = os.path.join(d, name + ".json")
    obj = load_file(path, fix)
    kind = "distill_curve" if name.startswith("distill_curve_") else name
    missing = [k for k in NEEDS[kind] if not isinstance(obj, dict) or k not in obj]
    if missing:
        raise DtrError(f"{path} comes from an older version of this project (it has no {', '.join(missing)}); {fix}")
    why = key and frame.differs(obj["key"], key)
    if why:
        raise DtrError(f"{path} was computed {why}: not the run now in {d}; {fix}")
    return obj

def slug(d, taken):
    """A run's name for its pictures: its --out_dir's folder and its own (shakespeare_char-cpu-gla), numbered
    where two runs would share one."""
    parts = os.path.abspath(d).split(os.sep)[-2:]
    name, n = "-".join(p for p in parts if p), 1
    while (name if n == 1 else f"{name}-{n}") in taken:
        n += 1
    return name if n == 1 else f"{name}-{n}"

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
        r["key"] = frame.run_key(d, r)
        for extra in ("baselines", "finetune", "decode_bench", "oracle", "layer_selectors"):
            if os.path.exists(os.path.join(d, extra + ".json")):
                script = "bench_decode" if extra == "decode_bench" else extra
                r[extra] = read(d, extra, f"rerun python experiments/{script}.py {d}", r["key"])
        curves = sorted(f[:-len(".json")] for f in os.listdir(d) if f.startswith("distill_curve_") and f.endswith(".json"))
        if curves:  # experiments/distill_curve.py, one file per --name
            r["distill_curves"] = {f[len("distill_curve_"):]: read(d, f, f"rerun python experiments/distill_curve.py {d} "
                                   f"--name {f[len('distill_curve_'):]}", {k: r["key"][k] for k in CURVE_KEY}) for f in curves}
        copy_frac = r["config"].get("copy_frac", 0.0)
        r["label"] = f"`{r['student']}` student on {r['dataset']}" + (f", teacher trained with copy_frac {copy_frac}" if copy_frac else "")
        r["slug"] = slug(d, {x["slug"] for x in runs})
        runs.append(r)
    return runs

# ---- writing ----

def write(path, text):
    with writing(path), open(path + ".tmp", "w") as f:
        f.write(text)
    with writing(path):
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
    if not args.update_project and os.path.abspath(folder) == frame.ROOT:
        raise DtrError(f"{folder} is this checkout: writing there would replace its own RESULTS.md and assets/; "
                       f"give --out <another folder> (or --update_project to rewrite them on purpose)")
    paths = pictures.draw(runs, os.path.join(folder, "assets"))
    shown = [os.path.relpath(p, folder) for p in paths]  # as the markdown beside assets/ links them
    results = tables.students_markdown(runs)
    for r in runs:
        results += tables.run_markdown(r)
    results += [f"![{tables.name(p)}]({p})" for p in shown]
    if args.update_project:
        fill(os.path.join(folder, "RESULTS.md"), "results", results)
        fill(os.path.join(folder, "README.md"), "headline", tables.headline(runs, shown))
        written = [os.path.join(folder, "RESULTS.md"), os.path.join(folder, "README.md") + " (its headline table)"]
    else:
        head = tables.headline(runs, more="The full tables follow.")
        write(os.path.join(folder, "RESULTS.md"), "\n".join(["# Results", ""] + head + results) + "\n")
        written = [os.path.join(folder, "RESULTS.md")]
    print(f"wrote {', '.join(written + paths)} from {len(runs)} run(s)"
          + ("" if args.update_project else "; the project's own files are untouched (--update_project rewrites them)"))

def main(argv=None):
    frame.command(ReadmeConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
