"""
The frame every experiment shares, so that each script holds only its experiment: the settings
for "a finished run's folder + the device" (a script's own settings dataclass extends RunConfig),
that run loaded on the device (its relative paths found again from anywhere), the key of what a
result was computed from (so that a saved result is reused only for the same run), the result
written beside the run, a change shown as the console shows it, and the command line around it.

Importing this module first puts the project's root on sys.path, so a script can import dtr.py.
"""
import dataclasses
import hashlib
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: dtr.py sits one folder up
sys.path.insert(0, ROOT)
import dtr  # noqa: E402
import torch  # noqa: E402
from plumbing import (DtrError, atomic_save, choose_device, cli, load_file, opt, parse_config, parse_flags,  # noqa: E402
                      weights_sha256)
from prepare import BUILTIN, load_data  # noqa: E402
from train_teacher import check_teacher, load_model  # noqa: E402

@dataclass
class RunConfig:
    """the finished run"""
    run_dir: str = opt("", "a finished run's folder, e.g. out/shakespeare_char-cpu/gla", positional=True)
    device: str = opt("auto", "where to run", ("auto", "cpu", "cuda", "mps"))

# ---- what a run and a result were computed from: reused only where it is the same ----

def sha256(tensors):
    """A fingerprint of tensors' values, in order (weights, or the tokens of batches)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

def run_key(run_dir, report):
    """What a run's results are computed from: its teacher's and its students' weights (sha256; the
    teacher's as the students were distilled from it, in students.pt), the settings that make its
    batches, its metric, and greedy's order and M_opt, which the experiments start from."""
    saved = load_file(os.path.join(run_dir, "students.pt"), f"rerun the python dtr.py command that made {run_dir}",
                      ("key", "students"))
    c = report["config"]
    return {"teacher_sha256": saved["key"]["teacher_sha256"],
            "students_sha256": sha256(t for sd in saved["students"] for t in sd.values()),
            **{k: c[k] for k in ("dataset", "block_size", "batch_size", "val_batches")}, "metric": report["metric"],
            "order": [t["layer"] for t in report["trajectory"]], "m_opt": report["m_opt"]["linear_layers"]}

def result_key(report, bf16, **batches):
    """A result's key, saved with it: the run's (load_run), the precision it was scored in, and the
    sha256 of the tokens of each set of batches it scored, e.g. search=..., test=...."""
    return {**report["key"], "precision": "bf16" if bf16 else "fp32",
            **{f"{split}_sha256": sha256(t for batch in b for t in batch[:2]) for split, b in batches.items()}}

NAMED = {"teacher_sha256": "another teacher", "students_sha256": "other students", "search_sha256": "other search batches",
         "test_sha256": "other test batches", "order": "another greedy order", "m_opt": "another M_opt"}

def differs(saved, want):
    """The first way a saved result's key differs from `want` (the fields of want only), as words
    ('from other students', 'with val_batches 16, not 8'); None where it is the same."""
    for k, v in want.items():
        if (saved or {}).get(k) != v:
            return f"from {NAMED[k]}" if k in NAMED else f"with {k} {(saved or {}).get(k)}, not {v}"
    return None

# ---- the run: its settings, its paths, its teacher and students ----

PATHS = ("data_dir", "dataset", "init_from", "meta", "task_text")  # settings that name files or folders

def run_cwds(run_dir, report):
    """The folders a run's relative paths (--data_dir data) may be relative to, likeliest first: the
    one python dtr.py ran in as found from where the run folder sits (<it>/<--out_dir>/<student>,
    right even after the project moved), the one the report recorded, and this one."""
    here, out = os.path.abspath(run_dir), os.path.normpath(os.path.join(report["config"]["out_dir"], dtr.run_name(report["config"])))
    found = [here[:-len(out)].rstrip(os.sep) or os.sep] if not os.path.isabs(out) and not out.startswith("..") \
        and here.endswith(os.sep + out) else []
    return list(dict.fromkeys(found + [report.get("cwd", os.getcwd()), os.getcwd()]))

def run_config(report, run_dir):
    """The dtr.Config a report was written with (fields this version does not know are dropped),
    its relative paths joined to the folder where they exist (the data folder to the likeliest)."""
    known = {f.name for f in dataclasses.fields(dtr.Config)}
    cfg = dtr.Config(**{k: v for k, v in report["config"].items() if k in known})
    cwds, paths = run_cwds(run_dir, report), {}
    for name in PATHS:
        value = getattr(cfg, name)
        if not value or os.path.isabs(value) or (name == "dataset" and value in BUILTIN):
            continue
        there = [os.path.join(d, value) for d in cwds if os.path.exists(os.path.join(d, value))]
        paths[name] = there[0] if there else os.path.join(cwds[0], value) if name == "data_dir" else value
    return dataclasses.replace(cfg, out_dir=os.path.dirname(os.path.abspath(run_dir)), **paths)

def teacher_path(run_dir):
    """A run folder's teacher: python dtr.py writes <out_dir>/teacher.pt beside <out_dir>/<student>/."""
    path = os.path.join(os.path.dirname(os.path.abspath(run_dir)), "teacher.pt")
    if not os.path.exists(path):
        raise DtrError(f"{path} is missing: give a run folder where python dtr.py wrote it, beside its "
                       f"teacher.pt (<out_dir>/<student>)")
    return path

def read_report(run_dir):
    """<run_dir>/report.json, python dtr.py's record of a finished run; an --out_dir given instead of one
    of its run folders is named, with them."""
    runs = sorted(d for d in os.listdir(run_dir) if os.path.isfile(os.path.join(run_dir, d, "report.json"))) \
        if os.path.isdir(run_dir) else []
    if runs and not os.path.exists(os.path.join(run_dir, "report.json")):
        raise DtrError(f"{run_dir} is an --out_dir; give one of its run folders: " + ", ".join(os.path.join(run_dir, d) for d in runs))
    return load_file(os.path.join(run_dir, "report.json"), f"run python dtr.py first; it writes {run_dir}/report.json",
                     ("config", "trajectory", "m_opt"))

def load_run(run_dir, device):
    """A finished run, for the experiments: (cfg, report, teacher, students, (train, val, meta));
    report["key"] is run_key's."""
    report = read_report(run_dir)
    cfg, path = run_config(report, run_dir), teacher_path(run_dir)
    model, ckpt = load_model(path, device, f"rerun the python dtr.py command that made {run_dir}")
    data = load_data(cfg)  # the text and tokenizer now at the run's paths: still the teacher's?
    check_teacher(ckpt, dataclasses.replace(cfg, init_from=report["config"].get("init_from", "")), data[2], path,
                  "put the run's text, tokenizer and --init_from folder back as they were, or run python dtr.py "
                  "again in another --out_dir", folder=cfg.init_from)
    students = [s.to(device) for s in dtr.make_students(model, cfg.student, **dtr.student_levers(cfg))]
    dtr.load_students(os.path.join(run_dir, "students.pt"), students, device, {"teacher_sha256": weights_sha256(model)})
    report["key"] = run_key(run_dir, report)  # (its teacher's sha256: just checked against this teacher)
    return cfg, report, model.requires_grad_(False), students, data

def open_run(args):
    """The device (chosen and printed once) and the finished run in args.run_dir:
    (device, bf16, cfg, report, teacher, students, (train, val, meta))."""
    device, bf16 = choose_device(args.device)
    return (device, bf16, *load_run(args.run_dir, device))

def write_result(result, args, name):
    """The common tail: `result` written atomically as <run_dir>/<name>, and where it went."""
    path = os.path.join(args.run_dir, name)
    atomic_save(result, path)
    print(f"wrote {path}")
    return result

# ---- variants of the students, as --variants and --students spell them ----

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
        names = [p.partition("=")[0] for p in pairs]
        bad = [p for p, n in zip(pairs, names) if n not in dtr.LEVERS or (n == "out_norm") == ("=" in p)]
        if bad or len(set(names)) < len(names):
            raise DtrError(f"{flag} {part!r}: " + (f"{bad[0]!r} is not a lever; give {', '.join(dtr.LEVERS[:2])}, "
                           f"{dtr.LEVERS[3]} as name=value, out_norm alone" if bad else "a lever given twice"))
        argv = [a for p in pairs for a in ["--" + p.partition("=")[0]] + ([p.partition("=")[2]] if "=" in p else [])]
        try:
            out.append((student, parse_flags(dtr.Config, argv, flag)))
        except DtrError as e:  # dtr.py's own words, with the variant named
            raise DtrError(f"{flag} {part!r}: {str(e).removesuffix('; see --help')}") from None
    if not out:
        raise DtrError(f"{flag} is empty; give e.g. \"gla{sep} gla short_conv=4\"")
    return out

# ---- a change as the console shows it (dtr.print_trajectory) ----

def change(p, p0, metric):
    """p against p0: a loss's relative change in %, an accuracy's change in points (a zero p0: the
    plain difference, as dtr.py shows it)."""
    return 100 * (p - p0) / (abs(p0) or 1) if metric == "loss" else 100 * (p - p0)

def change_text(p, p0, metric, digits=2):
    return f"{change(p, p0, metric):+.{digits}f}" + ("%" if metric == "loss" else " pt")

def command(config, run, doc, argv=None):
    """An experiment's command line: parse and check `config`'s flags, then run(args), with errors
    as one line (plumbing.cli)."""
    cli(run, lambda a: parse_config(config, a, doc), argv)
