"""
Decoding speed and cache memory (paper Fig. 2, Table 2): prefill N tokens, then decode one token
at a time, with the teacher, a finished run's M_opt and an all-linear model of each student asked
for (--students; the run's own by default) taking turns.

    python experiments/bench_decode.py out/shakespeare_char-cpu/gla --contexts 512,2048,8192   # writes decode_bench.json
    python experiments/bench_decode.py out/shakespeare_char-cpu/gla --students "gla,gdn,jet,jet window=16"

Full-attention layers keep a KV cache that grows with the context; linear layers keep a
fixed-size state. Decoding is timed for one sequence and for `batch` sequences at once (the
prefilled cache copied to each), which shares each token's fixed cost over the batch, and each
twice: eager, and through torch.compile, which removes most of PyTorch's per-op overhead (at
128 wide ~300 small ops per token, the same in every model, that hide what attention costs).
Random weights of the run's model size: weights do not change speed; the position table is
stretched to the longest context just for timing.
"""
import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass

import frame  # first: it puts the project's root on sys.path
import torch

import dtr
from plumbing import choose_device, load_file, machine, opt, validate
from students import auto_window
from train_teacher import GPT, Cache, GPTConfig

@dataclass
class BenchConfig(frame.RunConfig):
    """the decoding benchmark"""
    contexts: str = opt("512,1024,2048,4096,8192,16384", "comma-separated prompt lengths in tokens", "ints>0")
    new_tokens: int = opt(32, "tokens decoded after each prefill", ">0")
    repeats: int = opt(5, "timed repeats (median)", ">0")
    batch: int = opt(8, "sequences decoded at once in the batched timing", ">0")
    students: str = opt("", "comma-separated students to time all-linear, each a student and its levers (name=value, "
                            "or a switch alone), e.g. \"gla,gdn,jet window=16\" (default: the run's own, with its levers)")
    compile: bool = opt(True, "also time decoding through torch.compile (a while per model to compile)")

    def check(self):
        if self.students:
            frame.parse_variants(self.students, ",", "--students")

DEFAULT_LEVERS = {k: f.default for k, f in dtr.Config.__dataclass_fields__.items() if k in dtr.LEVERS}

def variant_name(student, kw):
    """A variant as --students spells it, its levers at their defaults left out: "jet window=16"."""
    return " ".join([student] + [k if v is True else f"{k}={v}" for k, v in kw.items() if v != DEFAULT_LEVERS[k]])

def cache_bytes(cache):
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in layer.values() if torch.is_tensor(t))

def copy_cache(cache, B):
    """The same prefilled cache for B sequences: every tensor entry (KV cache, state, a convolution's or
    the window's last inputs, each (1, ...)) repeated along the batch; the token count "n" as it is."""
    out = copy.copy(cache)
    out.layers = [{k: v.expand(B, *v.shape[1:]).clone() if torch.is_tensor(v) else v for k, v in layer.items()}
                  for layer in cache.layers]
    return out

def compiled_decoder(model, batch, device, name, context=70):
    """torch.compile(model) for one-token decoding steps, compiled here for 1 and `batch`
    sequences (shapes dynamic, so every context reuses the graphs) and checked against the
    eager model's logits. None, with the reason printed, where compiling does not work."""
    step = torch.compile(model, dynamic=True)
    idx = torch.randint(model.config.vocab_size, (batch, context + 3), device=device)
    try:
        for B in (1, batch):
            eager, comp = Cache(model, B, context + 3), Cache(model, B, context + 3)
            model(idx[:B, :context], cache=eager)
            model(idx[:B, :context], cache=comp)
            for t in range(context, context + 3):
                want, _ = model(idx[:B, t:t + 1], cache=eager)
                got, _ = step(idx[:B, t:t + 1], cache=comp)
                torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    except Exception as e:  # no C++ compiler, an unsupported platform, ...: time eager decoding only
        print(f"decode   compiled decoding skipped ({name}): {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None
    return step

@torch.inference_mode()
def bench_decode(cfg, model_args, device, patterns, contexts, new_tokens=32, repeats=5, batch=8, compile=True):
    """Per pattern ({name: (student, its levers, linear layers)}) and context: prefill seconds, cache
    bytes, and decoding tokens/s (1 sequence and `batch`, eager and compiled), median of `repeats`.
    model_args: the teacher's GPTConfig fields (its size and vocabulary)."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**{**model_args, "block_size": max(contexts) + new_tokens, "dropout": 0.0})).to(device).eval()
    models = {}
    for name, (student, kw, layers) in patterns.items():  # one model per pattern, so each compiles on its own
        with dtr.hybrid(model.transformer.h, layers, [s.to(device) for s in dtr.make_students(model, student, **kw)]):
            models[name] = copy.deepcopy(model)
    # subtle: every model's forward is GPT.forward, one code object, so dynamo's recompile limit (8)
    # counts all their graphs together and past it silently runs eager: give each model its own 8,
    # and have a hit fail (compiled_decoder then skips compiling) rather than time eager as compiled
    torch._dynamo.config.recompile_limit = 8 * len(models)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    steps = {name: {"eager": m} for name, m in models.items()}
    for name, m in models.items():  # all compiled or none: the tables compare like with like
        steps[name]["compiled"] = compiled_decoder(m, batch, device, name, min(70, m.config.block_size - 3)) if compile else None
        if steps[name]["compiled"] is None:
            break
    modes = ["eager"] + (["compiled"] if all(s.get("compiled") is not None for s in steps.values()) else [])
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    rows = []
    for N in contexts:
        idx = torch.randint(model.config.vocab_size, (batch, N + new_tokens), device=device)
        prefill, held = {name: [] for name in patterns}, {}
        decode = {(name, B, mode): [] for name in patterns for B in (1, batch) for mode in modes}
        for _ in range(repeats):
            for name, m in models.items():  # models take turns, so noise hits them alike
                cache = Cache(m, 1, N + new_tokens)
                sync(); t0 = time.perf_counter()
                m(idx[:1, :N], cache=cache)
                sync(); prefill[name].append(time.perf_counter() - t0)
                held[name] = cache_bytes(cache)
                for B, mode in itertools.product((1, batch), modes):
                    c = copy_cache(cache, B)
                    for t in range(N, N + new_tokens):
                        t0 = time.perf_counter()
                        steps[name][mode](idx[:B, t:t + 1], cache=c)
                        sync(); decode[name, B, mode].append(time.perf_counter() - t0)
        for name in patterns:
            row = {"model": name, "context": N, "prefill_s": median(prefill[name]), "cache_bytes": held[name]}
            line = f"decode   {name:14s} context {N:6d} | prefill {row['prefill_s']:7.3f} s | cache {held[name] / 2**20:8.2f} MiB"
            for mode in modes:
                tail = "" if mode == "eager" else "_compiled"  # decode_tok_s, decode_tok_s_compiled, ...
                row["decode_tok_s" + tail] = 1 / median(decode[name, 1, mode])
                row[f"decode_tok_s_batch{batch}" + tail] = batch / median(decode[name, batch, mode])
                line += f" | {mode} {row['decode_tok_s' + tail]:7.1f} tok/s, batch {batch}: {row[f'decode_tok_s_batch{batch}' + tail]:7.1f}"
            rows.append(row)
            print(line)
    return {"device": device, "machine": machine(), "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
            "new_tokens": new_tokens, "repeats": repeats, "batch": batch, "compiled": "compiled" in modes,
            "students": [n for n in patterns if n not in ("teacher", "m_opt")], "rows": rows}

def markdown(bench, report):
    """RESULTS.md's tables: speed and cache per model and context, then each model's speed-up and
    cache against the teacher's. A file from before --students has one all-linear model, "all_linear"."""
    batch, L = bench["batch"], bench["n_layer"]
    shown = {"teacher": "teacher", "m_opt": f"M_opt ({len(report['m_opt']['linear_layers'])}/{L} linear)",
             "all_linear": "all-linear", **{name: f"all-linear `{name}`" for name in bench.get("students", [])}}
    speeds = [("decode_tok_s", "eager, 1 sequence"), (f"decode_tok_s_batch{batch}", f"eager, batch {batch}")]
    if bench.get("compiled"):
        speeds += [(key + "_compiled", label.replace("eager", "compiled")) for key, label in speeds]
    out = [f"Decoding speed and cache memory ({L} layers, {bench['n_embd']} wide, {bench['new_tokens']} new tokens, "
           f"median of {bench['repeats']} runs, {bench['machine']}):", "",
           "| context | model | prefill s | " + " | ".join(f"tok/s, {label}" for _, label in speeds) + " | cache MiB |",
           "|---" * (len(speeds) + 4) + "|"]
    out += [f"| {w['context']} | {shown[w['model']]} | {w['prefill_s']:.3f} | " + " | ".join(f"{w[key]:.1f}" for key, _ in speeds)
            + f" | {w['cache_bytes'] / 2**20:.2f} |" for w in bench["rows"]]
    teacher = {w["context"]: w for w in bench["rows"] if w["model"] == "teacher"}
    # speed-ups: eager against eager; and, with compiling, each model in its faster mode (the
    # teacher's attention is not always faster compiled, and it should not be held back)
    ratios = [(label, key, False) for key, label in speeds[:2]]
    if bench.get("compiled"):
        ratios += [(label.replace("eager", "faster mode"), key, True) for key, label in speeds[:2]]
    tok_s = lambda w, key, best: max(w[key], w[key + "_compiled"]) if best else w[key]
    ratio = lambda a, b: a / b if b else float("nan")  # a zero measured (a cache of nothing, a stalled timing): no ratio
    out += ["", "Against the teacher, same run (random weights of its size):", "",
            "| context | model | " + " | ".join(f"speed-up, {label}" for label, _, _ in ratios) + " | cache smaller by |",
            "|---" * (len(ratios) + 3) + "|"]
    out += [f"| {w['context']} | {shown[w['model']]} | "
            + " | ".join(f"{ratio(tok_s(w, key, best), tok_s(teacher[w['context']], key, best)):.1f}x" for _, key, best in ratios)
            + f" | {ratio(teacher[w['context']]['cache_bytes'], w['cache_bytes']):.0f}x |"
            for w in bench["rows"] if w["model"] != "teacher"]
    return out + [""]

def variants(args, cfg):
    """{name: (student, levers)} of --students, each checked as dtr.py checks a run's settings (a
    window at most an eighth of its context, rotary=after for gla and hedgehog only); default: the
    run's own student."""
    asked = frame.parse_variants(args.students, ",", "--students") if args.students else [(cfg.student, {})]
    out = {}
    for student, given in asked:
        kw = {**DEFAULT_LEVERS, **given} if args.students else dtr.student_levers(cfg)
        c = validate(dataclasses.replace(cfg, student=student, task="lm", task_text="", **kw))  # (the tasks' files are not needed)
        out[variant_name(student, dtr.student_levers(c))] = (student, dtr.student_levers(c))
    return out

def run(args):
    device, _ = choose_device(args.device)
    report = frame.read_report(args.run_dir)
    cfg = frame.run_config(report, args.run_dir)
    model_args = load_file(frame.teacher_path(args.run_dir), "run python dtr.py first",
                           ("model_args",))["model_args"]  # its size; not its weights
    # subtle: an auto window is the run's own (an eighth of the run's context), not one of each benchmarked context's
    fixed = lambda kw: {**kw, "window": auto_window(GPTConfig(**model_args))} if kw.get("window", 0) < 0 else kw
    own = (cfg.student, fixed(dtr.student_levers(cfg)))
    patterns = {"teacher": (*own, []), "m_opt": (*own, report["m_opt"]["linear_layers"]),
                **{name: (student, fixed(kw), list(range(cfg.n_layer))) for name, (student, kw) in variants(args, cfg).items()}}
    contexts = [int(c) for c in args.contexts.split(",")]
    result = bench_decode(cfg, model_args, device, patterns, contexts, args.new_tokens, args.repeats, args.batch, args.compile)
    result["own_student"] = variant_name(cfg.student, dtr.student_levers(cfg))  # M_opt's, all-linear where one of --students
    return frame.write_result({"key": frame.run_key(args.run_dir, report), **result}, args, "decode_bench.json")

def main(argv=None):
    frame.command(BenchConfig, run, __doc__, argv)

if __name__ == "__main__":
    main()
