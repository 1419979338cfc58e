"""
The frame every experiment shares, so that each script holds only its experiment: the settings
for "a finished run's folder + the device" (a script's own settings dataclass extends RunConfig),
that run loaded on the device, the result written beside it, and the command line around it.

Importing this module first puts the project's root on sys.path, so a script can import dtr.py.
"""
import dataclasses
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: dtr.py sits one folder up
sys.path.insert(0, ROOT)
import dtr  # noqa: E402
from plumbing import atomic_save, choose_device, cli, load_file, opt, parse_config, weights_sha256  # noqa: E402
from prepare import load_data  # noqa: E402
from train_teacher import load_model  # noqa: E402

@dataclass
class RunConfig:
    """the finished run"""
    run_dir: str = opt("", "a finished run's folder, e.g. out/shakespeare_char-cpu/gla", positional=True)
    device: str = opt("auto", "where to run", ("auto", "cpu", "cuda", "mps"))

def run_config(report):
    """The dtr.Config a report was written with (fields this version does not know are dropped)."""
    known = {f.name for f in dataclasses.fields(dtr.Config)}
    return dtr.Config(**{k: v for k, v in report["config"].items() if k in known})

def load_run(run_dir, device):
    """A finished run, for the experiments: (cfg, report, teacher, students, (train, val, meta))."""
    report = load_file(os.path.join(run_dir, "report.json"), f"run python dtr.py first; it writes {run_dir}/report.json",
                       ("config", "trajectory", "m_opt"))
    cfg = run_config(report)
    model, _ = load_model(os.path.join(os.path.dirname(run_dir.rstrip("/")), "teacher.pt"), device,
                          "delete the run folder and run python dtr.py again")
    students = [s.to(device) for s in dtr.make_students(model, cfg.student, **dtr.student_levers(cfg))]
    dtr.load_students(os.path.join(run_dir, "students.pt"), students, device, {"teacher_sha256": weights_sha256(model)})
    return cfg, report, model.requires_grad_(False), students, load_data(cfg)

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

def command(config, run, doc, argv=None):
    """An experiment's command line: parse and check `config`'s flags, then run(args), with errors
    as one line (plumbing.cli)."""
    cli(run, lambda a: parse_config(config, a, doc), argv)
