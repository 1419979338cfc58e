"""
What distillation steps buy (BLD, §3.1): for each student and each step budget, fresh students
distilled from a finished run's teacher, then per layer the held-out block MSE, the all-linear
model's test loss, and M_opt (greedy on the search batches, 1% tolerance) with its test loss.
Each budget is its own run (the cosine schedule ends at that budget, as `--distill_iters` would);
`--set` changes any distillation setting, to compare a variant against the default at equal steps.

    python experiments/distill_curve.py out/shakespeare_char-cpu/gla --steps 100,200,400,800,1500
    python experiments/distill_curve.py out/shakespeare_char-cpu/gla --set distill_lr=4e-3 --name lr4e-3

Writes distill_curve_<name>.json beside the run (times are this process's: run alone to compare them).
"""
import dataclasses
import re
import time
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import torch

import dtr
import tasks
from plumbing import DtrError, opt, parse_flags, validate

SETTINGS = ("distill_lr", "distill_batch_size", "gate_init", "seed") + dtr.LEVERS  # what --set may change, recorded with each budget

def overrides(text):
    """--set 'a=1,b=x' -> {"a": 1, "b": "x"}: read as dtr.py's own flags, so an unknown name or a
    value of the wrong type is refused as dtr.py refuses it (its ranges: validate, once applied);
    so is any other setting (the teacher's, the search's), which this experiment would not apply."""
    pairs = [p.partition("=") for p in filter(None, text.split(","))]
    other = [key for key, _, _ in pairs if key not in SETTINGS]
    if other:
        raise DtrError(f"--set {other[0]}: not a setting this experiment applies; --set takes {', '.join(SETTINGS)} "
                       f"(the step budgets: --steps)")
    return parse_flags(dtr.Config, [a for key, _, value in pairs for a in ("--" + key, value)], "--set")

@dataclass
class CurveConfig(frame.RunConfig):
    """the distillation curve"""
    students: str = opt("gla,gdn", "comma-separated students to distill")
    steps: str = opt("100,200,400,800,1500", "comma-separated step budgets, each a fresh distillation", "ints>0")
    set: str = opt("", "comma-separated distillation settings to change, e.g. distill_lr=4e-3,distill_batch_size=16")
    name: str = opt("default", "the result's name: distill_curve_<name>.json")

    def check(self):
        bad = [s for s in self.students.split(",") if s not in dtr.STUDENTS]
        if bad:
            raise DtrError(f"--students {bad[0]!r} is not a student; use a comma-separated list of {', '.join(dtr.STUDENTS)}")
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", self.name):  # a file name, never a path
            raise DtrError(f"--name {self.name!r}: use letters, digits, '-', '_' or '.' (it names distill_curve_<name>.json)")
        overrides(self.set)  # before the run is loaded

@torch.no_grad()
def cache_floats(student, context, device):
    """Numbers one sequence's decode cache holds in one linear layer after `context` tokens."""
    cache = student.new_cache(1, context)
    student(torch.zeros(1, context, student.c_attn.in_features, device=device), cache)
    return sum(t.numel() for t in cache.values() if torch.is_tensor(t))

def one_budget(model, cfg, train, lm, device, bf16):
    """Distil fresh students under cfg; their block MSE, all-linear test loss and M_opt (1%)."""
    torch.manual_seed(cfg.seed)
    students = [s.to(device) for s in dtr.make_students(model, cfg.student, **dtr.student_levers(cfg))]
    t0 = time.time()
    dtr.distill_blocks(model, students, train, cfg, device, bf16)
    distill_s = time.time() - t0
    mse, rel_mse = dtr.block_mse(model, students, lm[0], device, bf16)
    with dtr.hybrid(model.transformer.h, range(cfg.n_layer), students):
        all_linear = tasks.evaluate(model, lm[1], device, bf16)["loss"]
        window_only = None
        if cfg.window:  # the window's own work: the same students with their linear branch switched off
            for s in students:
                s.window_only = True
            window_only = tasks.evaluate(model, lm[1], device, bf16)["loss"]
            for s in students:
                s.window_only = False
    t0 = time.time()
    teacher, trajectory = dtr.greedy_replace(model, students, lm[0], device, bf16)
    m_opts = {}
    for tolerance in (0.01, 0.02):
        _, m = dtr.select_models(teacher, trajectory, tolerance)
        with dtr.hybrid(model.transformer.h, m["linear_layers"], students):
            m["test_loss"] = tasks.evaluate(model, lm[1], device, bf16)["loss"]
        m_opts[f"m_opt_{round(100 * tolerance)}pct"] = m
    return {"steps": cfg.distill_iters, "mse": mse, "rel_mse": rel_mse, "all_linear_test_loss": all_linear,
            "window_only_test_loss": window_only, "order": [t["layer"] for t in trajectory], **m_opts,
            "cache_floats": cache_floats(students[0], cfg.block_size, device), "distill_s": distill_s,
            "greedy_s": time.time() - t0}

def run(args):
    device, bf16, cfg, report, model, _, (train, val, meta) = frame.open_run(args)
    change = overrides(args.set)
    lm = (tasks.lm_batches(cfg, val, device), tasks.lm_batches(cfg, val, device, test=True))  # (search, test)
    teacher_test = report["test"][0]["loss"]
    result = {"key": frame.result_key(report, bf16, search=lm[0], test=lm[1]), "teacher_test_loss": teacher_test,
              "set": change, "runs": []}
    for student in args.students.split(","):
        for steps in map(int, args.steps.split(",")):
            c = validate(dataclasses.replace(cfg, student=student, distill_iters=steps, **change))
            r = {"student": student, "settings": {k: getattr(c, k) for k in SETTINGS},
                 **one_budget(model, c, train, lm, device, bf16)}
            result["runs"].append(r)
            print(f"curve    {student} {steps} steps | all-linear test loss {r['all_linear_test_loss']:.4f} "
                  f"({frame.change_text(r['all_linear_test_loss'], teacher_test, 'loss')}) | M_opt(1%) "
                  f"{len(r['m_opt_1pct']['linear_layers'])}/{cfg.n_layer} linear | distill {r['distill_s']:.0f}s")
            frame.write_result(result, args, f"distill_curve_{args.name}.json")  # after each, so a kill keeps what is done
    return result

def spearman(a, b):
    """Spearman's rank correlation of two orders of the same layers (1: the same order, -1: reversed)."""
    L = len(a)
    return 1 - 6 * sum((a.index(i) - b.index(i)) ** 2 for i in range(L)) / (L * (L * L - 1)) if L > 1 else 1.0

def seeds_markdown(curves):
    """Distillation seeds (--set seed=N), same teacher, student, steps and other settings: how far
    greedy's order and M_opt move with the students' random start and batches alone."""
    groups = {}
    for c in curves.values():
        for r in c["runs"]:
            if "order" in r and "seed" in r["settings"]:
                same = (r["student"], r["steps"], *sorted((k, v) for k, v in r["settings"].items() if k != "seed"))
                groups.setdefault(same, {})[r["settings"]["seed"]] = r
    out = []
    for (student, steps, *_), runs in groups.items():
        if len(runs) < 2:
            continue
        seeds = sorted(runs)
        rho = [spearman(runs[a]["order"], runs[b]["order"]) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
        out += [f"Distillation seeds {', '.join(map(str, seeds))} (`--set seed=N`), `{student}` at {steps} steps: greedy orders "
                + "; ".join(" ".join(f"L{i}" for i in runs[s]["order"]) for s in seeds) + "; Spearman correlation between "
                + (f"seeds {min(rho):+.2f} to {max(rho):+.2f} (mean {sum(rho) / len(rho):+.2f})" if len(rho) > 1 else f"the seeds {rho[0]:+.2f}")
                + "; M_opt at 1% (by search) "
                + ", ".join(f"{len(runs[s]['m_opt_1pct']['linear_layers'])}/{len(runs[s]['order'])} linear "
                            f"{runs[s]['m_opt_1pct']['linear_layers']}" for s in seeds)
                + "; all-linear test loss " + ", ".join(f"{runs[s]['all_linear_test_loss']:.4f}" for s in seeds) + ".", ""]
    return out

def markdown(curves, teacher_train_s=None):
    """RESULTS.md's table: {name: a distill_curve_<name>.json} -> per student and step budget, the
    all-linear test loss against the teacher's, M_opt at 1%, the relative MSE per layer, and the
    conversion time (distillation + greedy) as a share of the teacher's training time."""
    out = ["Distillation steps and what they buy (`python experiments/distill_curve.py <run folder> --set ... --name ...`), "
           "each budget a fresh distillation, test batches:", "",
           "| settings | student | steps | all-linear test loss | M_opt at 1% by search (its test loss) | relative MSE per layer | "
           "distill + greedy | / teacher time |", "|---" * 8 + "|"]
    for name, c in curves.items():
        t0 = c["teacher_test_loss"]
        for r in c["runs"]:
            shown = ", ".join(f"{k} {v}" for k, v in r["settings"].items()  # levers only where one is pulled
                              if k not in dtr.LEVERS or v != dtr.Config.__dataclass_fields__[k].default)
            L, k, conv = len(r["mse"]), len(r["m_opt_1pct"]["linear_layers"]), r["distill_s"] + r["greedy_s"]
            out.append(f"| {name}: {shown} | `{r['student']}` | {r['steps']} | {r['all_linear_test_loss']:.4f} "
                       f"({frame.change_text(r['all_linear_test_loss'], t0, 'loss')}) | {k}/{L} ({r['m_opt_1pct']['test_loss']:.4f}) | "
                       f"{' '.join(f'{x:.3f}' for x in r['rel_mse'])} | {conv:.0f} s | "
                       + (f"{100 * conv / teacher_train_s:.0f}% |" if teacher_train_s else "|"))
    return out + ["", f"The teacher's test loss: {t0:.4f}."] + ([f"Its training took {teacher_train_s:.0f} s."] if teacher_train_s else []) + \
        [""] + seeds_markdown(curves)

def main(argv=None):
    frame.command(CurveConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
