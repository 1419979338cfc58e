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

Writes levers.json beside the run, after each variant (times are this process's: run alone).
"""
import dataclasses
import os
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import distill_curve
import dtr
import readme
import tasks
from plumbing import DtrError, load_file, opt, parse_flags, validate

VARIANTS = ("gla; gla short_conv=4; gla rotary=none; gla rotary=after; gla out_norm; gla window=16; "
            "gla short_conv=4 out_norm; gla short_conv=4 out_norm window=16; gdn; gdn short_conv=4; "
            "gdn window=16; jet; jet short_conv=4; jet window=16; hedgehog")

def parse_variants(text, sep=";", flag="--variants"):
    """'gla; gla short_conv=4 out_norm' -> [("gla", {}), ("gla", {"short_conv": 4, "out_norm": True})]: a
    student, then its levers as dtr.py's flags (name=value, or a switch's name alone), read by dtr.py's
    own flag parser, so an unknown lever or a wrong value is refused as dtr.py refuses it. sep and flag:
    another script's separator and option (bench_decode.py's --students "gla,jet window=16")."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(sep))):
        student, *pairs = part.split()
        if student not in dtr.STUDENTS:
            raise DtrError(f"{flag}: {student!r} is not a student; start each variant with one of {', '.join(dtr.STUDENTS)}")
        bad = [p for p in pairs if p.partition("=")[0] not in dtr.LEVERS]
        if bad:
            raise DtrError(f"{flag}: {bad[0]!r} is not a lever; give {', '.join(dtr.LEVERS)} (name=value, out_norm alone)")
        argv = [a for p in pairs for a in ["--" + p.partition("=")[0]] + ([p.partition("=")[2]] if "=" in p else [])]
        out.append((student, parse_flags(dtr.Config, argv, flag)))
    if not out:
        raise DtrError(f"{flag} is empty; give e.g. \"gla{sep} gla short_conv=4\"")
    return out

@dataclass
class LeversConfig(frame.RunConfig):
    """the lever table"""
    variants: str = opt(VARIANTS, "semicolon-separated variants, each a student and its levers as name=value")
    markdown: bool = opt(False, "print RESULTS.md's table from the levers.json of the comma-separated run folders instead")
    update_project: bool = opt(False, "with --markdown: write the table into this checkout's RESULTS.md and its summary "
                                      "into README.md (between their levers markers)")

    def check(self):
        parse_variants(self.variants)

def name(student, levers):
    return " ".join([f"`{student}`"] + [f"{k}={v}" for k, v in levers.items()])

def markdown(run_dirs):
    """RESULTS.md's lever table (a row per teacher and variant), and README.md's summary: per
    teacher, dtr.py's default student and the variant with the best all-linear test loss."""
    table = ["| teacher (test loss) | student and levers | all-linear test loss | linear branch off | M_opt at 1% "
             "(test loss) | M_opt at 2% (test loss) | relative MSE per layer | distill + greedy | / teacher time | "
             "cache per layer (numbers) |", "|---" * 10 + "|"]
    summary = ["| teacher | student | all-linear test loss | M_opt at 2% | conversion / teacher time | cache per layer |",
               "|---" * 6 + "|"]
    default = {k: f.default for k, f in dtr.Config.__dataclass_fields__.items() if k in dtr.LEVERS + ("student",)}
    effective = lambda r: (r["student"], {k: r["levers"].get(k, default[k]) for k in dtr.LEVERS})  # the levers it ran with
    for d in run_dirs:
        res = load_file(os.path.join(d, "levers.json"), f"run python experiments/levers.py {d} first", ("runs", "key"))
        t0, rows = res["teacher_test_loss"], {}
        for r in res["runs"]:
            L, off, conv = len(r["mse"]), r.get("window_only_test_loss"), r["distill_s"] + r["greedy_s"]
            m = {p: f"{len(r[f'm_opt_{p}pct']['linear_layers'])}/{L} ({r[f'm_opt_{p}pct']['test_loss']:.4f})" for p in (1, 2)}
            cells = [f"{res['arch']} ({t0:.4f})", name(r["student"], r["levers"]), f"{r['all_linear_test_loss']:.4f} "
                     f"({frame.change_text(r['all_linear_test_loss'], t0, 'loss')})",
                     f"{off:.4f} ({frame.change_text(off, t0, 'loss')})" if off is not None else "-", m[1], m[2],
                     " ".join(f"{x:.3f}" for x in r["rel_mse"]), f"{conv:.0f} s",
                     f"{100 * conv / res['teacher_train_s']:.0f}%", f"{r['cache_floats']:,}"]
            table.append("| " + " | ".join(cells) + " |")
            rows[(r["student"], tuple(sorted(r["levers"].items())))] = cells
        table.append(f"| {res['arch']} | full attention at context {res['block_size']} |" + " |" * 7 +
                     f" {res['full_cache_floats']:,} |")
        best = min(res["runs"], key=lambda r: r["all_linear_test_loss"])
        for r in [r for r in res["runs"] if effective(r) == effective({"student": default["student"], "levers": {}})] + [best]:
            c = rows[(r["student"], tuple(sorted(r["levers"].items())))]
            line = f"| {c[0]} | {c[1]} | {c[2]} | {c[5]} | {c[8]} | {c[9]} (full attention: {res['full_cache_floats']:,}) |"
            summary += [] if line in summary else [line]
    return table, summary

def run(args):
    if args.markdown:
        table, summary = markdown(args.run_dir.split(","))
        print("\n".join(table + [""] + summary))
        if args.update_project:
            readme.fill(os.path.join(frame.ROOT, "RESULTS.md"), "levers", table)
            readme.fill(os.path.join(frame.ROOT, "README.md"), "levers", summary)
            print(f"wrote {frame.ROOT}/RESULTS.md and README.md (their levers sections)")
        return
    device, bf16, cfg, report, model, _, (train, val, meta) = frame.open_run(args)
    lm = (tasks.lm_batches(cfg, val, device), tasks.lm_batches(cfg, val, device, test=True))  # (search, test)
    teacher_test = report["test"][0]["loss"]
    result = {"key": frame.result_key(report, bf16, search=lm[0], test=lm[1]), "teacher_test_loss": teacher_test,
              "teacher_train_s": report["teacher"]["train_s"], "arch": cfg.arch, "block_size": cfg.block_size,
              "full_cache_floats": 2 * model.transformer.h[0].attn.new_cache(1, cfg.block_size)["k"].numel(), "runs": []}
    defaults = {k: f.default for k, f in dtr.Config.__dataclass_fields__.items() if k in dtr.LEVERS}
    variants = [(student, levers, validate(dataclasses.replace(cfg, student=student, **{**defaults, **levers})))
                for student, levers in parse_variants(args.variants)]  # every variant checked before any work
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
