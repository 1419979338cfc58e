"""pytest's set-up for every test file, before any of them imports the project, and the helpers the
test files share (no test file imports another): error ratios, tiny models, the real command line."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"  # kernel.py's Triton kernels run on the CPU; read when triton is imported
HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared")  # offline copies beside the checkout
if os.path.isdir(os.path.join(SHARED, "tiktoken_cache")):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken_cache"))

@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder holding the one copy of tiny Shakespeare both datasets read: the shared
    offline copy, else downloaded once."""
    import prepare  # here, not above: the environment is set first
    d = tmp_path_factory.mktemp("data")
    src = os.path.join(SHARED, "data", "shakespeare", "input.txt")
    if not os.path.exists(src):
        src = os.path.join(HERE, "data", "shakespeare", "input.txt")
        if not os.path.exists(src):
            prepare.download(prepare.SHAKESPEARE_URL, src)
    os.makedirs(d / "shakespeare")
    shutil.copy(src, d / "shakespeare" / "input.txt")
    return str(d)

# ---- helpers the test files share ----

def rel_err(a, b):
    """||a - b|| / ||b|| in fp64: the one way the tests compare floats."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

def tiny_gpt(n_layer=3, seed=0):
    """A random GPT small enough for any test: 20 tokens, 2 heads, 16 wide, context 32."""
    from train_teacher import GPT, GPTConfig  # here, not above: the environment is set first
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=32, vocab_size=20, n_layer=n_layer, n_head=2, n_embd=16)).eval()

def periodic_gpt(n_layer):
    """A teacher that has learned a periodic sequence, so any damage to a layer costs loss."""
    from train_teacher import get_batch  # here, not above: the environment is set first
    model = tiny_gpt(n_layer=n_layer, seed=1)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(20, (7,), generator=g).repeat(300)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        _, loss = model(*get_batch(data, 32, 8, "cpu", g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False), data

# child processes use this process's thread count, so their floats match the in-process runs
ENV = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}

def launch(cmd, returncode=0):
    """Run a command in the checkout; assert its exit code; return stdout + stderr."""
    r = subprocess.run(cmd, cwd=HERE, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == returncode, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout + r.stderr

def refused(args, script="dtr.py", env=None):
    """Run the real command line (a subprocess: `python dtr.py` runs the file as __main__) and
    return its one error line: exit code 2, no traceback."""
    r = subprocess.run([sys.executable, script] + args, cwd=HERE, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and err and err[-1].startswith("error: "), r.stdout[-2000:] + r.stderr[-2000:]
    return err[-1]

def refused_here(main, args, capsys):
    """Run a script's real command line (its main) in this process, quicker than a subprocess where the
    models are read again anyway, and return its one error line: exit code 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err and err[-1].startswith("error: ") and "Traceback" not in "\n".join(err), err
    return err[-1]

def torchrun(script, args, nproc=2):
    return launch([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", script] + args)

def weights(path, key="state_dict"):
    """Every tensor of a checkpoint (the teacher, or all students) as one flat fp64 vector."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    sds = ckpt[key] if isinstance(ckpt[key], list) else [ckpt[key]]
    return torch.cat([v.double().flatten() for sd in sds for v in sd.values()])

def with_out_dir(args, out):
    """The same command line with another --out_dir."""
    return args[:args.index("--out_dir")] + ["--out_dir", str(out)] + args[args.index("--out_dir") + 2:]

def fingerprint(folder):
    """{path: bytes} of every file under folder but the run lock: to show that nothing finished changed."""
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(folder) for f in fs if f != ".lock"}

@pytest.fixture(scope="session")
def tiny_run(data_dir, tmp_path_factory):
    """One finished run of the tiny preset (gla), shared by every test that reads or reruns one:
    (its command line, its --out_dir, its report)."""
    import dtr
    out = str(tmp_path_factory.mktemp("out"))
    args = ["--preset", "tiny", "--data_dir", data_dir, "--out_dir", out, "--sample_tokens", "20"]
    return args, out, dtr.run(dtr.parse_args(args))
