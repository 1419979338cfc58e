"""
Kernel benchmark: kernel.py's chunked linear attention against causal softmax attention (SDPA), the
naive quadratic form and, where it imports and runs, flash-linear-attention's `chunk_simple_gla`.

    python experiments/bench_kernel.py            # everything; on one GPU meant to take under 5 minutes
    python experiments/bench_kernel.py --quick --max-T 1024 --batch 2 --heads 2 --threads 1   # CPU, seconds

Three parts, each printed as it is measured:
1. a length sweep at B = 1, H = 4, D = 64 (the table `python kernel.py` printed before the
   benchmark moved here), chunked (gated, normalised) vs SDPA vs naive;
2. the training-like shape, B = 8, H = 8, D = 64, forward and forward+backward, where the chunked
   form has to beat SDPA: chunked as the students run it (normalised: one more value column) and
   plain (unnormalised, the recurrence chunk_simple_gla computes), against SDPA and fla;
3. the gated delta rule's chunked forward against its token-by-token loops, at T = 2048.
On CUDA the chunked form is impl 'triton' in bf16; elsewhere impl 'torch' in fp32. Times are the
median of --reps runs after one warm-up (which also compiles the Triton kernels).
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # kernel.py sits one folder up
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import kernel  # noqa: E402

def time_ms(fn, reps, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up: allocator, Triton compilation
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)

def fla_form():
    """flash-linear-attention's chunk kernel for the same scalar-gated recurrence (unnormalised), or
    None where it does not import. It wants (B, T, H, D)."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    return lambda q, k, v, g: chunk_simple_gla(*(t.transpose(1, 2) for t in (q, k, v)),
                                               g=g.transpose(1, 2), scale=1.0)[0]

def benchmark(device, B, H, D, Ts, reps, forms, naive_max=0):
    """Each form's forward and forward+backward at each T, the table as printed, then for each
    direction the shortest T from which chunked stays faster than SDPA. Returns the rows."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    impl = "triton" if device.type == "cuda" and kernel.HAS_TRITON else "torch"
    print(f"bench    device {device}, {dtype}, B={B} H={H} D={D}, chunked = impl '{impl}', median of {reps}, "
          f"times in ms" + (f"; naive only up to T={naive_max}" if "naive" in forms else ""))
    print(f"{'T':>6} | fwd: " + " ".join(f"{n:>8}" for n in forms) + " | fwd+bwd: "
          + " ".join(f"{n:>8}" for n in forms) + " | fwd speed-up vs sdpa")
    rows, broken = [], set()
    for T in Ts:
        torch.manual_seed(0)
        q, k = (torch.rand(B, H, T, D, device=device, dtype=dtype) for _ in range(2))  # feature-mapped: >= 0
        v = torch.randn(B, H, T, D, device=device, dtype=dtype)
        g = -0.1 * torch.rand(B, H, T, device=device, dtype=dtype)
        fwd, fwd_bwd = {}, {}
        for name, f in forms.items():
            fwd[name] = fwd_bwd[name] = float("nan")
            if (name == "naive" and T > naive_max) or name in broken:
                continue
            try:
                with torch.no_grad():
                    fwd[name] = time_ms(lambda: f(q, k, v, g), reps, device)
                ins = [t.detach().requires_grad_() for t in (q, k, v, g)]
                fwd_bwd[name] = time_ms(lambda: f(*ins).float().sum().backward(), reps, device)
            except RuntimeError as e:  # e.g. a third-party kernel refusing this Triton version
                broken.add(name)
                print(f"bench    {name} dropped: {str(e).splitlines()[0][:160]}")
        rows.append((T, fwd, fwd_bwd))
        print(f"{T:>6} | fwd: " + " ".join(f"{fwd[n]:8.2f}" for n in forms) + " | fwd+bwd: "
              + " ".join(f"{fwd_bwd[n]:8.2f}" for n in forms) + f" | {fwd['sdpa'] / fwd['chunked']:6.1f}x")
    for i, label in [(1, "forward"), (2, "forward+backward")]:
        wins = [r[i]["chunked"] < r[i]["sdpa"] for r in rows]
        cross = next((rows[j][0] for j in range(len(rows)) if all(wins[j:])), None)
        print(f"crossover {label}: chunked beats SDPA " + (f"from T = {cross}" if cross
              else f"nowhere up to T = {rows[-1][0]}"))
    return rows

def print_ratios(rows, names):
    """Forward+backward, each other form's time over chunked's (> 1: chunked is faster), per T."""
    for name in names:
        print(f"ratio    fwd+bwd {name} / chunked: " + ", ".join(
            f"T={T} {fb[name] / fb['chunked']:.2f}x" for T, _, fb in rows))

def benchmark_gated_delta_rule(device, reps, T=2048):
    """Gated delta rule forward, fp32, at one length: the chunked form vs the token-by-token loops."""
    B, H, D = 1, 4, 64
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, device=device) for _ in range(3))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    beta, log_g = torch.rand(B, H, T, device=device), -0.1 * torch.rand(B, H, T, device=device)

    def step_loop():  # the naive form without its D x D matrix: decode the sequence token by token
        S = None
        for t in range(T):
            _, S = kernel.gated_delta_rule_step(q[:, :, t], k[:, :, t], v[:, :, t], beta[:, :, t], log_g[:, :, t], S)

    forms = {"chunked": lambda: kernel.gated_delta_rule(q, k, v, beta, log_g), "step loop": step_loop,
             "naive": lambda: kernel.gated_delta_rule(q, k, v, beta, log_g, impl="naive")}
    with torch.no_grad():
        ms = {name: time_ms(f, reps, device) for name, f in forms.items()}
    print(f"bench    gated delta rule fwd fp32, B={B} H={H} T={T} D={D}, median of {reps}: "
          + ", ".join(f"{n} {t:.1f} ms ({t / ms['chunked']:.1f}x)" for n, t in ms.items()))

def main():
    parser = argparse.ArgumentParser(description="Linear attention kernel benchmark (kernel.py).")
    parser.add_argument("--quick", action="store_true", help="short run: T up to 2048, 3 repeats")
    parser.add_argument("--max-T", type=int, default=16384, help="longest sequence to benchmark")
    parser.add_argument("--reps", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for both sides "
                        "(0: torch's default; 1 gives steadier numbers when the cores are shared)")
    parser.add_argument("--fla", action=argparse.BooleanOptionalAction, default=True,
                        help="also time flash-linear-attention's chunk_simple_gla on CUDA, where it imports")
    parser.add_argument("--batch", type=int, default=8, help="B of the training-like shape (part 2)")
    parser.add_argument("--heads", type=int, default=8, help="H of the training-like shape (part 2)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    max_T, reps = (min(args.max_T, 2048), 3) if args.quick else (args.max_T, args.reps)
    triton_version = kernel.triton.__version__ if kernel.HAS_TRITON else "not installed"
    print(f"device   {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
          f", torch {torch.__version__}, triton {triton_version}")
    cuda = device.type == "cuda"
    impl = "triton" if cuda and kernel.HAS_TRITON else "torch"
    sdpa = lambda q, k, v, g: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    fla = fla_form() if args.fla and cuda else None

    # 1. the length sweep
    forms = {"chunked": lambda q, k, v, g: kernel.linear_attention(q, k, v, g, impl=impl), "sdpa": sdpa,
             "naive": lambda q, k, v, g: kernel.linear_attention(q, k, v, g, impl="naive")}
    if fla:
        forms["fla"] = fla
    Ts = [256 * 2 ** i for i in range(20) if 256 * 2 ** i <= max_T]
    benchmark(device, 1, 4, 64, Ts, reps, forms, naive_max=8192 if cuda else 4096)  # naive: (B, H, T, T) fp32 tensors

    # 2. the training-like shape
    forms = {"chunked": forms["chunked"],
             "plain": lambda q, k, v, g: kernel.linear_attention(q, k, v, g, normalize=False, impl=impl),
             "sdpa": sdpa}
    if fla:
        forms["fla"] = fla
    rows = benchmark(device, args.batch, args.heads, 64, [T for T in Ts if T >= min(1024, max_T)], reps, forms)
    print_ratios(rows, [n for n in forms if n != "chunked"])

    # 3. the gated delta rule
    benchmark_gated_delta_rule(device, reps)

if __name__ == "__main__":
    main()
