"""
Which student converts a teacher, and what each lever buys (students.py): for each variant (a
student and its levers), fresh students distilled from a finished run's teacher at the run's own
settings, then per layer the held-out block MSE, the all-linear model's test loss (for a window,
also with its linear branch switched off: the window's own work), M_opt at 1% and 2% (greedy on
the search batches) with its test loss, the conversion time, and the decode cache a linear layer
holds against full attention's at the run's context.

    python experiments/levers.py out/shakespeare_char-cpu/gla
    python experiments/levers.py out/llama/gla --variants "gla;gla short_conv=4;jet window=16"
    python experiments/levers.py out/shakespeare_char-cpu/gla,out/llama/gla --markdown   # RESULTS.md's table
    python experiments/levers.py out/shakespeare_char-cpu/gla,out/llama/gla --summary    # README.md's, from the runs

Writes levers.json beside the run, after each variant (times are this process's: run alone). A
variant's levers are pulled over none (students.NO_LEVERS), whatever dtr.py's defaults are.
"""
import dataclasses
import os
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import distill_curve
import dtr
import readme
import tables
import tasks
from plumbing import DtrError, load_file, opt, validate

VARIANTS = ("gla; gla short_conv=4; gla rotary=none; gla rotary=after; gla out_norm; gla window=16; "
            "gla short_conv=4 out_norm; gla short_conv=4 out_norm window=16; gdn; gdn short_conv=4; "
            "gdn window=16; jet; jet short_conv=4; jet window=16; hedgehog")

def default_variants(block_size, rotary):
    """VARIANTS as they apply to a run: the window at most an eighth of its context, and the rotations'
    places only for a rotary teacher."""
    w = min(16, block_size // 8)
    return [(student, {k: w if k == "window" else v for k, v in levers.items()}) for student, levers in frame.parse_variants(VARIANTS)
            if rotary or "rotary" not in levers]

@dataclass
class LeversConfig(frame.RunConfig):
    """the lever table"""
    variants: str = opt(VARIANTS, "semicolon-separated variants, each a student and its levers as name=value")
    markdown: bool = opt(False, "print RESULTS.md's lever table from the levers.json of the comma-separated run folders")
    summary: bool = opt(False, "print README.md's summary from the comma-separated finished runs' own reports")
    update_project: bool = opt(False, "with --markdown or --summary: write it into this checkout's RESULTS.md or "
                                      "README.md, between their levers markers")

    def check(self):
        frame.parse_variants(self.variants)

def name(student, levers):
    return " ".join([f"`{student}`"] + [f"{k}={v}" for k, v in levers.items()])

def markdown(run_dirs):
    """RESULTS.md's lever table, a row per teacher and variant (from each run's levers.json). Times are
    compared within a teacher (the same process, one variant after another), against its first row."""
    table = ["| teacher (test loss) | student and levers | all-linear test loss | linear branch off | M_opt at 1% "
             "(test loss) | M_opt at 2% (test loss) | relative MSE per layer | distill + greedy | x first row | "
             "cache per layer (numbers) |", "|---" * 10 + "|"]
    for d in run_dirs:
        res = load_file(os.path.join(d, "levers.json"), f"run python experiments/levers.py {d} first", ("runs", "key"))
        run = load_file(os.path.join(d, "report.json"), f"give a finished run folder (python dtr.py wrote {d}/report.json)")
        why = frame.differs(res["key"], {k: v for k, v in frame.run_key(d, run).items() if k in readme.CURVE_KEY})
        if why:  # its own students are distilled afresh: the teacher and the batches must be the run's
            raise DtrError(f"{d}/levers.json was computed {why}: not the run now in {d}; rerun python experiments/levers.py {d}")
        teacher = res.get("teacher", res["arch"])
        t0, first = res["teacher_test_loss"], res["runs"][0]["distill_s"] + res["runs"][0]["greedy_s"]
        for r in res["runs"]:
            L, off, conv = len(r["mse"]), r.get("window_only_test_loss"), r["distill_s"] + r["greedy_s"]
            m = {p: f"{len(r[f'm_opt_{p}pct']['linear_layers'])}/{L} ({r[f'm_opt_{p}pct']['test_loss']:.4f})" for p in (1, 2)}
            table.append(f"| {teacher} ({t0:.4f}) | {name(r['student'], r['levers'])} | {r['all_linear_test_loss']:.4f} "
                         f"({frame.change_text(r['all_linear_test_loss'], t0, 'loss')}) | "
                         + (f"{off:.4f} ({frame.change_text(off, t0, 'loss')})" if off is not None else "-")
                         + f" | {m[1]} | {m[2]} | {' '.join(f'{x:.3f}' for x in r['rel_mse'])} | {conv:.0f} s | "
                         f"{conv / first:.2f} | {r['cache_floats']:,} |")
        table.append(f"| {teacher} | full attention at context {res['block_size']} |" + " |" * 7 +
                     f" {res['full_cache_floats']:,} |")
    return table

def summary(run_dirs, device="cpu"):
    """README.md's summary: per finished run (dtr.py's own report), the student it ran, its all-linear
    model and M_opt against the teacher, conversion time against the teacher's training in that run,
    and the decode cache a linear layer holds against full attention's."""
    out = ["| teacher | student | all-linear test loss | M_opt at 2% | conversion / teacher time | cache per layer (numbers) |",
           "|---" * 6 + "|"]
    for d in run_dirs:
        cfg, report, model, students, _ = frame.load_run(d, device)
        t0, t1, L = report["test"][0]["loss"], report["test"][-1]["loss"], cfg.n_layer
        s, k = students[0], len(report["m_opt"]["linear_layers"])
        levers = {"short_conv": cfg.short_conv, "rotary": cfg.rotary, "out_norm": cfg.out_norm, "window": s.window}  # auto: its value
        shown = {key: v for key, v in levers.items() if v != dtr.NO_LEVERS[key]}
        share = tables.conversion_share(report)  # distillation (as first trained, not a rerun's reuse) + greedy
        full = 2 * model.transformer.h[0].attn.new_cache(1, cfg.block_size)["k"].numel()
        teacher = cfg.init_from or {"gpt2": "GPT-2", "llama": "Llama"}[cfg.arch] + "-shaped"
        out.append(f"| {teacher}, {'rotary' if model.config.pos == 'rope' else 'learned'} positions ({t0:.4f}) | "
                   f"{name(cfg.student, shown)} | {t1:.4f} ({frame.change_text(t1, t0, 'loss')}) | {k}/{L} linear "
                   f"({frame.change_text(report['m_opt']['test_loss'], t0, 'loss')}) | {f'{share:.0%}' if share else '-'} | "
                   f"{distill_curve.cache_floats(s, cfg.block_size, device):,} (full attention {full:,}) |")
    return out

def run(args):
    if args.markdown or args.summary:
        lines = markdown(args.run_dir.split(",")) if args.markdown else summary(args.run_dir.split(","))
        print("\n".join(lines))
        if args.update_project:
            path = os.path.join(frame.ROOT, "RESULTS.md" if args.markdown else "README.md")
            readme.fill(path, "levers", lines)
            print(f"wrote {path} (its levers section)")
        return
    device, bf16, cfg, report, model, _, (train, val, meta) = frame.open_run(args)
    lm = (tasks.lm_batches(cfg, val, device), tasks.lm_batches(cfg, val, device, test=True))  # (search, test)
    teacher_test = report["test"][0]["loss"]
    result = {"key": frame.result_key(report, bf16, search=lm[0], test=lm[1]), "teacher_test_loss": teacher_test,
              "teacher_train_s": report["teacher"]["train_s"], "arch": cfg.arch, "teacher": cfg.init_from or cfg.arch, "block_size": cfg.block_size,
              "rotary": model.config.pos == "rope",
              "full_cache_floats": 2 * model.transformer.h[0].attn.new_cache(1, cfg.block_size)["k"].numel(), "runs": []}
    variants = []
    asked = default_variants(cfg.block_size, model.config.pos == "rope") if args.variants == VARIANTS else \
        frame.parse_variants(args.variants)
    for student, levers in asked:  # every variant checked before any work
        try:
            variants.append((student, levers, validate(dataclasses.replace(cfg, student=student, **{**dtr.NO_LEVERS, **levers}))))
        except DtrError as e:
            raise DtrError(f"--variants {name(student, levers).replace('`', '')!r}"
                           f"{' (a default variant; give your own --variants)' if args.variants == VARIANTS else ''}: {e}") from None
    for student, levers, c in variants:
        r = {"student": student, "levers": levers, **distill_curve.one_budget(model, c, train, lm, device, bf16)}
        result["runs"].append(r)
        print(f"levers   {name(student, levers)} | all-linear test loss {r['all_linear_test_loss']:.4f} "
              f"({frame.change_text(r['all_linear_test_loss'], teacher_test, 'loss')}) | M_opt(2%) "
              f"{len(r['m_opt_2pct']['linear_layers'])}/{cfg.n_layer} linear | distill {r['distill_s']:.0f}s")
        frame.write_result(result, args, "levers.json")  # after each, so a kill keeps what is done
    return result

def main(argv=None):
    frame.command(LeversConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
