"""
The plumbing every script of the project shares, each piece in one place, so that the method
(dtr.py) and the teacher (train_teacher.py) can be read without it: settings and their checks,
the one-line error, files written atomically and read back, progress, the device, and torchrun.
Imports nothing from the project.
"""
import argparse
import contextlib
import dataclasses
import errno
import glob
import hashlib
import json
import math
import os
import pickle
import platform
import re
import sys
import time
import zipfile

import numpy as np
import torch
import torch.distributed as dist

try:
    import fcntl  # the run-folder lock (claim); not on Windows
except ImportError:
    fcntl = None

# ---- errors: a problem with the user's input is one line ----

class DtrError(Exception):
    """A problem with the user's input: printed as one line, exit code 2, no traceback."""

def first_words(e, n=100):
    """An exception's message, cut to its first sentence and at most n characters at a word break."""
    text = str(e).splitlines()[0].split(". ")[0] if str(e) else ""
    return text if len(text) <= n else text[:n].rsplit(" ", 1)[0] + " ..."

# ---- settings: small dataclasses -> command line, every value checked in one place ----

RULES = {  # the valid values of a numeric setting, and how the error message says it
    ">0": (lambda v: v > 0, "> 0"),
    ">=0": (lambda v: v >= 0, ">= 0"),
    ">=-1": (lambda v: v >= -1, ">= -1"),
    "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "ints>0": (lambda v: all(re.fullmatch(r" *0*[1-9][0-9]{0,8} *", s, re.ASCII) for s in v.split(",")),  # --steps 1,2
               "a comma-separated list of whole numbers from 1 to 999,999,999 (ASCII digits), e.g. 200,400"),
}

def opt(default, help, valid=None, positional=False):
    """A setting: its default, its --help line, its valid values (a RULES key or a tuple of
    choices), and whether it is given without a --flag (an experiment's run folder)."""
    return dataclasses.field(default=default, metadata={"help": help, "valid": valid, "positional": positional})

def validate(cfg):
    """The one place settings are checked: each field against its rule or choices, then together."""
    for f in dataclasses.fields(cfg):
        value, valid = getattr(cfg, f.name), f.metadata.get("valid")
        if isinstance(value, float) and not math.isfinite(value):
            raise DtrError(f"--{f.name} {value} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**31 - 1:  # torch takes 32-bit sizes
            raise DtrError(f"--{f.name} {value} is too large; use at most {2**31 - 1:,}")
        if isinstance(valid, tuple) and value not in valid:
            raise DtrError(f"unknown --{f.name} {value!r}; use one of {', '.join(valid)}")
        if isinstance(valid, str) and not RULES[valid][0](value):
            raise DtrError(f"--{f.name} {repr(value) if isinstance(value, str) else value} is not {RULES[valid][1]}")
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg

class Parser(argparse.ArgumentParser):
    """argparse, with its complaints (an unknown flag, a value of the wrong type) as one DtrError line."""

    def error(self, message):
        raise DtrError(f"{message}; see --help")

def number(kind):
    """argparse's type for an int or float flag, ASCII digits only: int() and float() also read
    other scripts' digits ('٣', full-width '３') and fail on '²', which str.isdigit() passes."""
    def parse(text):
        if not text.isascii():
            raise ValueError(text)  # argparse says: invalid int value: '٣'
        return kind(text)
    parse.__name__ = kind.__name__
    return parse

def parse_flags(cls, argv, description, presets=None):
    """The command line of a settings dataclass: one --flag per field (generated from its type,
    default, help and valid values; each dataclass of the hierarchy its own --help section).
    Returns {field: value} for the flags given; the caller fills in the rest and validates."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = {}  # --help shows each dataclass's settings under its docstring: the teacher's, then the method's
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        section = parser.add_argument_group(klass.__doc__.strip().splitlines()[0])
        for f in dataclasses.fields(klass):
            sections.setdefault(f.name, section)
    for f in dataclasses.fields(cls):
        if f.metadata["positional"]:
            parser.add_argument(f.name, help=f.metadata["help"])
            continue
        valid = f.metadata["valid"]
        shown = ([f"one of {', '.join(valid)}"] if isinstance(valid, tuple) else []) + \
                ([f"default {f.default!r}"] if f.default != "" else []) + \
                [f"{p} {v[f.name]!r}" for p, v in (presets or {}).items() if f.name in v]
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else \
            dict(type=number(type(f.default)) if isinstance(f.default, (int, float)) else str)
        sections[f.name].add_argument(f"--{f.name}", default=None, **kind, help=f.metadata["help"] + (f" ({', '.join(shown)})" if shown else ""))
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}

def parse_config(cls, argv, description):
    """An experiment's settings: the dataclass's defaults <- the flags given, validated."""
    return validate(cls(**parse_flags(cls, argv, description)))

# ---- device, and torchrun (one process per device; in a single process these are no-ops) ----

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets in each process

def launched():
    """(rank, world size) as torchrun set them, before the process group exists; (0, 1) without it.
    RANK or WORLD_SIZE left in the environment without the rest, or not numbers, is one DtrError."""
    env = {k: os.environ.get(k) for k in TORCHRUN}
    if env["RANK"] is None and env["WORLD_SIZE"] is None:
        return 0, 1
    if not (all(env.values()) and all(re.fullmatch(r"[0-9]+", env[k], re.ASCII) for k in TORCHRUN[:3])
            and int(env["RANK"]) < int(env["WORLD_SIZE"])):
        raise DtrError(f"{' '.join(f'{k}={v}' for k, v in env.items() if v is not None)} in the environment, but not "
                       f"as torchrun sets them (all of {', '.join(TORCHRUN)}, RANK below WORLD_SIZE); unset "
                       f"{' '.join(k for k in TORCHRUN if k in os.environ)} to run in one process, or start with torchrun")
    return int(env["RANK"]), int(env["WORLD_SIZE"])

def rank():
    return dist.get_rank() if dist.is_initialized() else 0

def world(before_init=False):
    if before_init:  # settings are checked before the process group exists
        return launched()[1]
    return dist.get_world_size() if dist.is_initialized() else 1

def choose_device(name):
    """The one place device and dtype are chosen: cuda -> mps -> cpu, bf16 autocast on CUDA; launched by
    torchrun, this process joins the process group here."""
    reason = "asked for"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
        reason = "auto-detected"
    if name == "cuda" and not torch.cuda.is_available():
        raise DtrError("--device cuda, but PyTorch sees no CUDA GPU; use --device cpu (or auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DtrError("--device mps, but MPS is not available; use --device cpu (or auto)")
    bf16 = name == "cuda" and torch.cuda.is_bf16_supported()
    if not dist.is_initialized() and launched()[1] > 1:
        dist.init_process_group("nccl" if name == "cuda" else "gloo")
        if name == "cuda":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" now means this process's GPU
        if rank() > 0:
            sys.stdout = open(os.devnull, "w")  # one log, written by rank 0; errors still reach stderr
    print(f"device {name} ({reason}){', bf16 autocast' if bf16 else ', fp32'}"
          f"{f', {world()} processes (torchrun)' if world() > 1 else ''}")
    return name, bf16

def autocast(device, bf16):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16)

def barrier():
    if world() > 1:
        dist.barrier()

def my_share(items):
    """This process's items under torchrun (every rank-th one); all of them in a single process."""
    return list(items)[rank()::world()]

def gather_dict(d):
    """Every process's {index: value}, merged and sorted: the same on every process."""
    parts = [d] * world()  # in a single process, d alone
    if world() > 1:
        dist.all_gather_object(parts, d)
    return dict(sorted(kv for part in parts for kv in part.items()))

# ---- files: written atomically, every file read back in one place, resumable phases ----

FORMAT = 2  # the version of the files this project writes; a file without one is from before versions (1)

def cannot_write(path, e):
    """The one message of a failed write or folder creation (its OSError e): the path, why, what to do."""
    full = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # else a read-only place, a file where a folder should be
    return DtrError(f"cannot write {path} ({e.strerror or e}); " + ("free some disk space (or raise the file-size "
                    "limit, ulimit -f), or " if full else "") + "pick a folder you can write to (--out_dir, --data_dir; "
                    "an experiment's run folder or --out)")

@contextlib.contextmanager
def writing(path):
    """File-system calls on path, their OSError (a read-only place, a file where a folder should be) as one line."""
    try:
        yield
    except OSError as e:
        raise cannot_write(path, e) from None

def atomic_save(obj, path):
    """Write obj (a dict: JSON for .json, else torch.save; or a numpy array, raw) to a temp file of this
    process's own, then rename: a killed or failed write never leaves a half-written file, and two
    processes never write over each other's temp file. Dicts carry the file format (FORMAT). Only
    rank 0 writes. A failed write (a full disk, a file-size limit) is one DtrError with its cause."""
    if rank() > 0:
        return
    if isinstance(obj, dict):
        obj = {"format": FORMAT, **obj}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "w" if path.endswith(".json") else "wb") as f:
            if path.endswith(".json"):
                json.dump(obj, f, indent=2)
            elif isinstance(obj, np.ndarray):
                f.write(np.ascontiguousarray(obj).data)  # its raw bytes, as np.fromfile reads them
            else:
                torch.save(obj, f)  # through a Python file: a failed write surfaces as its OSError
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C or a failed write mid-file: leave neither a temp nor a half file
        if os.path.exists(tmp):
            os.remove(tmp)
        # torch.save reports a failed write as a RuntimeError raised while handling the OSError
        cause = e if isinstance(e, OSError) else e.__context__ if isinstance(e.__context__, OSError) else None
        if cause is not None:
            raise cannot_write(path, cause) from None
        raise

class PlainUnpickler(pickle.Unpickler):
    """Dicts, lists, strings and numbers only: a pickle that names any class or function is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}, not plain data")

def load_file(path, fix, keys=(), ours=True):
    """The one place a file is read back, always onto the CPU (callers move what they need; random
    number states must stay there): JSON (.json), a torch checkpoint (a zip archive; tensors and plain
    data only), or else a pickle of plain data (nanoGPT's meta.pkl, whatever its name). A file that
    does not load, lacks `keys`, or (ours=True: written by this project) has another file format is
    one DtrError naming it and saying what to do (`fix`)."""
    try:
        if path.endswith(".json"):
            with open(path) as f:
                obj = json.load(f)
        elif zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with open(path, "rb") as f:
                obj = PlainUnpickler(f).load()
        missing = [k for k in keys if k not in obj]
    except Exception as e:  # empty, truncated, someone else's pickle, not a dict at all
        raise DtrError(f"cannot read {path} ({type(e).__name__}: {first_words(e) or 'empty'}); {fix}") from None
    version = obj.pop("format", 1) if isinstance(obj, dict) else None  # (readers see the dict that was saved)
    if ours and version != FORMAT:
        raise DtrError(f"{path} was written by {'an older' if version is not None and version < FORMAT else 'another'} "
                       f"version of this project (file format {version}, this one reads {FORMAT}); {fix}")
    if missing:
        raise DtrError(f"{path} is not the file this step reads (it has no {', '.join(missing)}); {fix}")
    return obj

@contextlib.contextmanager
def claim(folder):
    """One run at a time in a folder: hold an exclusive lock on folder/.lock while the run works (the OS
    releases it even if the process is killed), with the holder's pid and command in it; a second run
    is refused at once, naming that process. Under torchrun rank 0 holds it for all (RANK is set before
    the process group exists); without fcntl (Windows) there is no lock."""
    if launched()[0] > 0 or fcntl is None:
        yield
        return
    lock = os.path.join(folder, ".lock")
    made, had, d = [], os.path.exists(lock), os.path.abspath(folder)  # what a refused run puts back as it was:
    while not os.path.exists(d):  # the folders it creates (out/new/run: new and run), deepest first
        made.append(d)
        d = os.path.dirname(d)
    with writing(folder):
        os.makedirs(folder, exist_ok=True)
        f = open(lock, "a+")
    with f:
        with writing(f.name):
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                raise DtrError(f"{folder} is in use by another run (process {f.read().strip() or '?'}); wait for it "
                               f"to finish, or pick another --out_dir") from None
            f.seek(0)
            before, times = f.read(), os.stat(lock)
            f.truncate(0)
            f.write(f"{os.getpid()}: {' '.join(sys.argv)}")
            f.flush()
        try:
            yield  # closing the file releases the lock
        except DtrError:  # refused (a bad --init_from, a teacher of other settings): the folder as it was
            f.seek(0)
            f.truncate(0)
            f.write(before)
            f.flush()
            os.utime(lock, ns=(times.st_atime_ns, times.st_mtime_ns))
            if not had:
                os.remove(lock)
            for d in made:
                if os.listdir(d):
                    break
                os.rmdir(d)
            raise

def check_resumable(saved, want, path, fix=None):
    """Refuse to continue from a file written with other settings, naming the first that differs."""
    for key, value in want.items():
        if saved.get(key) != value:
            said = ("was made from another text (a file of the same name, or this one changed)" if key == "data_sha256" else
                    f"was made from another {key[:-7]}" if key.endswith("_sha256") else
                    f"was written with {key}={saved.get(key)} but this run has {key}={value}")
            raise DtrError(f"{path} {said}; " + (fix or "rerun with the settings it was written with, "
                           "another --out_dir, or delete it to redo that phase"))

def weights_sha256(model):
    """A fingerprint of a model's weights: a retrained teacher with the same weights keeps its students
    (the file's own hash would not: it also records how long training took)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

class Partial:
    """A phase's resumable checkpoint, <name>.partial.pt|json: saved with the settings it depends on
    (`key`) and the seconds the phase has run so far, refused by a rerun with other settings,
    discarded when the phase is done."""

    def __init__(self, path, key):
        self.path, self.key, self.t0, self.spent = path, key, time.time(), 0.0

    def load(self):
        """The saved state, on the CPU as load_file reads every file, or None."""
        if not os.path.exists(self.path):
            return None
        saved = load_file(self.path, "delete it to redo that phase from its start", ("key",))
        check_resumable(saved["key"], self.key, self.path)
        self.spent = saved.get("train_s", 0.0)
        return saved

    def elapsed(self):
        """Seconds spent on the phase, the runs before an interruption included."""
        return self.spent + time.time() - self.t0

    def save(self, **state):
        atomic_save({"key": self.key, "train_s": self.elapsed(), **state}, self.path)

    def done(self):
        for p in [self.path] + glob.glob(glob.escape(self.path) + ".*.tmp"):  # and temp files killed writes left
            if rank() == 0 and os.path.exists(p):
                with writing(p):
                    os.remove(p)

# ---- progress, and the one command-line wrapper ----

def machine():
    """What produced the numbers, for the reports and the README."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}, torch {torch.__version__}"

class Pace:
    """ms/step over the steps since the last report, and the ETA from it: a validation pass
    (paused) or a resume do not skew it, and the first step, slow with warm-up, gets no ETA."""

    def __init__(self, step, total):
        self.step, self.total, self.t, self.first = step, total, time.time(), True

    def paused(self, seconds):
        self.t += seconds

    def __call__(self, step):
        per_step = (time.time() - self.t) / max(1, step - self.step)
        eta = "-" if self.first and step - self.step == 1 else "%d:%02d" % divmod(int(per_step * (self.total - step)), 60)
        self.step, self.t, self.first = step, time.time(), False
        return f"{1000 * per_step:.0f} ms/step | eta {eta}"

def cli(job, parse, argv=None):
    """Run job(parse(argv)) as a command: a DtrError becomes one 'error:' line and exit code 2;
    Ctrl-C says how to resume. Every script of the project goes through here."""
    cfg = None
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show the text's characters must not fail a run
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    try:
        launched()  # torchrun's variables left in the environment: refused before anything else
        cfg = parse(argv)
        return job(cfg)
    except DtrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # *.partial.* are the unfinished phases' checkpoints (the logs above say which step)
        out = getattr(cfg, "out_dir", None) or "."
        found = [f for f in sorted(glob.glob(os.path.join(out, "**", "*.partial.*"), recursive=True)) if not f.endswith(".tmp")]
        print(f"\ninterrupted; rerun the same command to resume{' from ' + ', '.join(found) if found else ''} "
              f"(finished phases are reused)", file=sys.stderr)
        sys.exit(130)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
