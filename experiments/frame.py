"""
The frame every experiment shares, so that each script holds only its experiment: the settings
for "a finished run's folder + the device" (a script's own settings dataclass extends RunConfig),
that run loaded on the device, the result written beside it, and the command line around it.

Importing this module first puts the project's root on sys.path, so a script can import dtr.py.
"""
import os
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout: dtr.py sits one folder up
sys.path.insert(0, ROOT)
import dtr  # noqa: E402
from plumbing import atomic_save, choose_device, cli, opt, parse_config  # noqa: E402

@dataclass
class RunConfig:
    """the finished run"""
    run_dir: str = opt("", "a finished run's folder, e.g. out/shakespeare_char-cpu/gla", positional=True)
    device: str = opt("auto", "where to run", ("auto", "cpu", "cuda", "mps"))

def open_run(args):
    """The device (chosen and printed once) and the finished run in args.run_dir:
    (device, bf16, cfg, report, teacher, students, (train, val, meta))."""
    device, bf16 = choose_device(args.device)
    return (device, bf16, *dtr.load_run(args.run_dir, device))

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
