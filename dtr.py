"""
Distill-then-Replace (DtR, arXiv 2601.11667) in one file, in the paper's order:

0. a pretrained full-attention GPT: the teacher (train_teacher.py trains one if it is missing,
   or imports yours: --init_from a nanoGPT checkpoint, GPT-2, or a Llama, Qwen2 or Mistral model);
1. the linear-attention students (students.py): every block's attention gets a linear twin, q/k/v/o
   copied (hedgehog, gla, gdn: Gated DeltaNet, or jet: JetBlock, each with optional levers);
2. blockwise local distillation (§3.1): each twin learns to reproduce its teacher block's
   output from the teacher block's own input (MSE), all blocks at once;
3. greedy replacement (Algorithm 1): swap in, one at a time, the twin whose swap hurts the
   validation ("search") batches least, all the way to the all-linear model;
4. M_best (the best seen) and M_opt (the most linear layers within a tolerance), chosen on the
   search batches and reported on held-out test batches, as Algorithm 1 ends;
5. target tasks (§4): with --task lm,copy,cloze,your.jsonl one search per task on the same students;
   multiple-choice tasks scored as LM-Evaluation-Harness scores them (tasks.py: batches and metric P).

    python dtr.py --dataset shakespeare_char
    torchrun --standalone --nproc_per_node=2 dtr.py --dataset shakespeare_char   # same result, 2 processes

The paper's other experiments (placement baselines, finetuning, decoding speed, the README's
tables) are scripts in experiments/ that read a finished run's folder.
"""
import contextlib
import dataclasses
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plumbing import (DtrError, Pace, Partial, atomic_save, autocast, check_resumable, choose_device, claim, cli,
                      first_words, gather_dict, load_file, machine, my_share, opt, weights_sha256, world)
from prepare import load_data
from tasks import (METRICS, batch_scores, evaluate, n_scored, reduce, task_batches, task_metric, task_sources,
                   without_repeat)
from students import (LEVERS, NO_LEVERS, STUDENTS, GatedDeltaNet, JetBlock, LinearAttention, auto_window, make_students,
                      student_levers)
from train_teacher import (PRESETS as TEACHER_PRESETS, TeacherConfig, configure, cosine_lr, get_batch, load_model,
                           load_or_train, sample_text)

# ---- settings: the teacher's (train_teacher.py), and the method's ----

@dataclass
class Config(TeacherConfig):
    """the method: distillation, greedy replacement, M_best/M_opt, tasks (dtr.py)"""
    student: str = opt("gla", "the linear-attention twin: gla (gated), hedgehog (plain), gdn (gated delta rule) or "
                              "jet (JetBlock: gated delta rule, dynamic convolution on v, output norm and gate)", STUDENTS)
    short_conv: int = opt(0, "the student's levers (students.py): a depthwise causal convolution of this kernel size on "
                             "q, k and v, started as the identity (0: none)", ">=0")
    rotary: str = opt("auto", "where a rotary teacher's rotations go in the student: before the feature map, after it "
                              "(RoFormer's linear form; hedgehog, gla) or none; auto: before, none for jet",
                      ("auto", "before", "after", "none"))
    out_norm: bool = opt(False, "a per-head RMSNorm and SiLU output gate on the student's output (jet always has one)")
    window: int = opt(-1, "a sliding-window softmax branch over the last W tokens beside the linear one, at most "
                          "block_size / 8; 0: none (purely linear); -1 (auto): block_size / 8, at most 64, for a "
                          "rotary teacher (Llama, Qwen2, Mistral, --arch llama), none for learned positions", ">=-1")
    distill_iters: int = opt(400, "distillation steps (all blocks train together)", ">0")
    distill_lr: float = opt(4e-3, "distillation peak learning rate", ">0")
    distill_batch_size: int = opt(8, "sequences per distillation step", ">0")
    gate_init: str = opt("span", "where the gla and gdn decay starts: span (each head's from how far back its teacher "
                                 "head attends) or fixed (g ~ 0.999 in every head)", ("span", "fixed"))
    metric: str = opt("auto", "the task metric P that greedy replacement and M_opt go by: loss (lower is better), "
                              "accuracy (the share of tokens predicted exactly, or of multiple-choice items answered "
                              "right), acc_norm (choices scored per character; on token tasks the same as accuracy); "
                              "auto: accuracy for multiple-choice tasks, loss for the others", ("auto",) + tuple(METRICS))
    tolerance: float = opt(0.02, "M_opt keeps P within this of the teacher's: loss <= (1 + tolerance) x, "
                                 "accuracy >= (1 - tolerance) x", "[0,1)")
    keep_full: int = opt(-1, "M_opt by a budget instead: the search's hybrid with this many full-attention layers "
                             "(paper Table 4; -1: by --tolerance)", ">=-1")
    task: str = opt("lm", "comma-separated target tasks, one greedy search each: lm (next token), copy (recall a "
                          "repeated passage), cloze (pick a passage's continuation among 4), or path/to/your.jsonl: "
                          'multiple choice, one item a line: {"context": "...", "choices": ["...", "..."], "gold": 0}')
    task_text: str = opt("", "path to your own validation text: one more target task, scored as next-token loss")
    cloze_items: int = opt(400, "items of the cloze task: half search, half test", ">0")
    sample_tokens: int = opt(200, "tokens to generate from the teacher and M_opt at the end", ">=0")
    sample: str = opt("", "path to a checkpoint (teacher.pt, m_opt.pt, ...): generate from it and exit")

    def check(self):
        super().check()
        task_sources(self)  # unknown tasks, clashing names and windows too short for a task are refused here
        rotary_teacher = self.arch == "llama" or bool(self.init_from) and self.tokenizer == "auto"  # (a Llama-family import)
        if self.rotary != "auto" and not rotary_teacher:
            raise DtrError(f"--rotary {self.rotary} places a rotary teacher's rotations, and this teacher has learned "
                           f"positions instead; leave --rotary out (or train a rotary one: --arch llama)")
        if self.out_norm and self.student == "jet":
            raise DtrError("--out_norm: jet always has its output norm and gate; leave --out_norm out")
        if self.rotary == "after" and self.student not in ("hedgehog", "gla"):
            raise DtrError(f"--rotary after (RoFormer's linear form) is for the hedgehog and gla students; "
                           f"give --student {self.student} --rotary before or none")
        if self.window > self.block_size // 8:
            raise DtrError(f"--window {self.window} is more than an eighth of the context ({self.block_size}): the "
                           f"window would do the linear attention's work; use at most {self.block_size // 8}")
        if self.short_conv > self.block_size:
            raise DtrError(f"--short_conv {self.short_conv} is longer than the context ({self.block_size}); use 4")
        if self.keep_full > self.n_layer:
            raise DtrError(f"--keep_full {self.keep_full} is more than the {self.n_layer} layers; "
                           f"keep at most {self.n_layer} full")
        if self.batch_size * self.val_batches < 2:
            raise DtrError("--batch_size x --val_batches must be at least 2: search and test batches each need a window")
        if world(before_init=True) > self.n_layer:
            raise DtrError(f"{world(before_init=True)} processes for {self.n_layer} blocks; start at most {self.n_layer} with torchrun")

PRESETS = {name: {**TEACHER_PRESETS[name], **method} for name, method in {
    "tiny": dict(distill_iters=50, sample_tokens=60),
    "cpu": dict(),
    "cpu12": dict(),
    "gpu": dict(distill_iters=1000, distill_batch_size=64, distill_lr=1e-3),
    "gpt2-cpu": dict(distill_iters=150, distill_batch_size=4, sample_tokens=100),
}.items()}

# ---- torchrun and resume for the two phases: each in one place, one line in the method ----
# torchrun: distillation splits the blocks over the processes, greedy each round's candidates;
# every process runs the whole frozen teacher on the same batches, and the results are shared.
# resume: distillation saves its students every save_interval steps, greedy its trajectory
# after every round, into *.partial.* files that a rerun with the same settings continues from.

def share_students(students, mine):
    """Every process gets every student, each from the process that trained it."""
    for i, sd in gather_dict({i: students[i].state_dict() for i in mine}).items():
        students[i].load_state_dict(sd)

def restore_distill(resume, students, optimizers, gen):
    saved = resume.load() if resume else None
    if saved is None:
        return 0
    for i in optimizers:
        students[i].load_state_dict(saved["students"][i])
        optimizers[i].load_state_dict(saved["optimizers"][i])
    gen.set_state(saved["gen"])
    print(f"distill  resuming {resume.path} at step {saved['step']}/{saved['key']['distill_iters']}")
    return saved["step"]

def save_distill(resume, step, cfg, students, optimizers, gen):
    if not resume or step % cfg.save_interval or step == cfg.distill_iters:
        return
    state = gather_dict({i: (students[i].state_dict(), o.state_dict()) for i, o in optimizers.items()})
    resume.save(step=step, gen=gen.get_state(), students=[s for s, _ in state.values()],
                optimizers=[o for _, o in state.values()])

def restore_greedy(resume, n_layer):
    saved = resume.load() if resume else None
    if saved is None:
        return []
    print(f"greedy   resuming {resume.path} after round {len(saved['trajectory'])}/{n_layer}")
    return saved["trajectory"]

# ---- 1. the linear-attention students (students.py: hedgehog, gla, gdn, jet, and their levers) ----

def swap_in(blocks, layers, students):
    """The hybrid: the listed blocks' attention replaced by their students (setattr, no copies)."""
    for i in layers:
        blocks[i].attn = students[i]
    return blocks

@contextlib.contextmanager
def hybrid(blocks, layers, students):
    """swap_in for the duration of a `with` block, then every block's own attention back.
    The one way a student enters a model: blocks is model.transformer.h, or a list of one Block."""
    own = [block.attn for block in blocks]
    try:
        yield swap_in(blocks, layers, students)
    finally:
        for block, attn in zip(blocks, own):
            block.attn = attn

# ---- 2. blockwise local distillation (§3.1) ----

@torch.no_grad()
def block_io(model, idx):
    """One teacher forward: the input and output of every block, lists of (B, T, C)."""
    x = model.embed(idx)
    inputs, outputs = [], []
    for block in model.transformer.h:
        inputs.append(x)
        x = block(x)
        outputs.append(x)
    return inputs, outputs

@torch.no_grad()
def start_students(model, students, x, gate_init="span"):
    """Where distillation starts, read off the teacher's own attention on the block inputs of x (B, T):
    - gate_init=span: each gated head starts with the decay of its teacher head's reach. The teacher
      head's mean look-back d = sum_j a_ij (i - j) over the queries of the window's second half; a
      decay g weights the token n back by g^n, whose mean n is g / (1 - g), so g = d / (d + 1), and
      the bias b solves logsigmoid(b) / 16 = log g, capped at the fixed start's b = 4 (g ~ 0.999).
    - a window branch starts mixing in the teacher head's share of attention inside its window;
    - an output norm's weight starts at the teacher head's output scale (its RMS), so that
      rmsnorm(y) w starts on the teacher's scale.
    Prints each gated head's d."""
    reach = []
    for i, (block, s, h) in enumerate(zip(model.transformer.h, students, block_io(model, x)[0])):
        a = block.attn.attention_weights(block.ln_1(h)).float()  # (B, nh, T, T)
        T = a.size(-1)
        pos = torch.arange(T, dtype=torch.float, device=x.device)
        if s.gate is not None and gate_init == "span":
            d = (pos - a @ pos)[..., T // 2:].mean(dim=(0, 2)).clamp_min(0.5)  # (nh,) tokens back
            s.gate.bias.copy_(torch.logit((d / (d + 1)) ** 16, eps=1e-6).clamp(max=4.0))
            reach.append(f"L{i} " + " ".join(f"{v:.1f}" for v in d.tolist()))
        if s.window:
            inside = (pos[:, None] - pos[None]).lt(s.window)  # (T, T): key j within the window of query i
            share = (a * inside).sum(-1)[..., T // 2:].mean(dim=(0, 2))  # (nh,)
            s.window_gate.bias.copy_(torch.logit(share, eps=1e-3))
        if s.out_norm is not None:
            _, _, v = block.attn.qkv(block.ln_1(h))
            y = a @ v.float().repeat_interleave(a.size(1) // v.size(1), dim=1)  # (B, nh, T, hs): the heads' outputs
            s.out_norm.copy_(y.pow(2).mean(dim=(0, 2, 3)).sqrt()[:, None, None].expand_as(s.out_norm))
    if reach:
        print("distill  decay starts at each head's reach (tokens back) " + " | ".join(reach))

def distill_loss(block, student, x, target):
    """§3.1's loss for one block: || Block_student(x) - Block_teacher(x) ||^2 (mean, fp32), where x
    (B, T, C) is the teacher's own hidden state entering the block (teacher forcing) and target
    (B, T, C) the teacher block's output. The block's LayerNorms and MLP take part but stay frozen."""
    with hybrid([block], [0], [student]):
        return F.mse_loss(block(x).float(), target.float())

def distill_blocks(model, students, train, cfg, device="cpu", bf16=False, resume=None):
    """Train every student at once from one teacher forward per step. Blocks are independent: the
    sum of the per-block losses gives each student exactly its own block's gradient, and with its
    own optimizer and clipping a student is the same however torchrun splits the blocks.
    resume: a Partial to continue from and save to (see the resume section)."""
    model.eval().requires_grad_(False)  # the teacher is a fixed target; only students learn
    for s in students:
        s.train().requires_grad_(True)
    mine = my_share(range(len(students)))  # torchrun: this process's blocks (all of them, alone)
    optimizers = {i: torch.optim.AdamW(students[i].parameters(), lr=cfg.distill_lr, weight_decay=0.0) for i in mine}
    # from batches of their own, so the training batches are the same either way
    start_students(model, students, get_batch(train, cfg.block_size, cfg.distill_batch_size, device,
                                              torch.Generator().manual_seed(cfg.seed + 2))[0], cfg.gate_init)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # identical on every process: the same batches
    start = restore_distill(resume, students, optimizers, gen)
    pace = Pace(start, cfg.distill_iters)
    for it in range(start, cfg.distill_iters):
        x, _ = get_batch(train, cfg.block_size, cfg.distill_batch_size, device, gen)
        with autocast(device, bf16):
            inputs, outputs = block_io(model, x)
            losses = {i: distill_loss(model.transformer.h[i], students[i], inputs[i], outputs[i]) for i in mine}
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise DtrError(f"distillation diverged (loss {loss.item()}) at step {it + 1}; "
                           f"lower --distill_lr (now {cfg.distill_lr})")
        for optimizer in optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for i, optimizer in optimizers.items():
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(it, cfg.distill_lr, 0.0, 0, cfg.distill_iters)  # cosine to 0, no warmup
            torch.nn.utils.clip_grad_norm_(students[i].parameters(), 1.0)
            optimizer.step()
        save_distill(resume, it + 1, cfg, students, optimizers, gen)
        if it % 100 == 0 or it == cfg.distill_iters - 1:
            mse = gather_dict({i: l.item() for i, l in losses.items()})
            print(f"distill  step {it + 1}/{cfg.distill_iters} | mse " +
                  " ".join(f"L{i} {l:.4f}" for i, l in mse.items()) + f" | {pace(it + 1)}")
    share_students(students, mine)
    for s in students:
        s.eval().requires_grad_(False)
    return students

@torch.no_grad()
def block_mse(model, students, batches, device="cpu", bf16=False):
    """Per layer: the distillation loss on held-out batches, and that MSE relative to the variance
    of the teacher block's residual update (comparable across layers)."""
    L = len(students)
    mse, var = torch.zeros(L), torch.zeros(L)
    with autocast(device, bf16):
        for x, _ in batches:
            inputs, outputs = block_io(model, x)
            for i, (block, s) in enumerate(zip(model.transformer.h, students)):
                mse[i] += distill_loss(block, s, inputs[i], outputs[i]).item()
                var[i] += (outputs[i] - inputs[i]).float().var().item()
    return (mse / len(batches)).tolist(), (mse / var).tolist()

# ---- 3. greedy replacement (Algorithm 1) ----

@torch.no_grad()
def greedy_round(model, students, batches, linear, device="cpu", bf16=False, metric="loss"):
    """One round of Algorithm 1: {layer: the metric of the current hybrid (`linear` already
    swapped in) with that still-full layer swapped too}."""
    blocks = model.transformer.h
    candidates = my_share([i for i in range(len(blocks)) if i not in linear])  # torchrun: a share each
    rows = {i: [] for i in candidates}
    # the current hybrid is shared by every candidate up to the layer it swaps: run it once per
    # batch and keep every layer's input, so a candidate only recomputes from its own layer on.
    # subtle: one batch's inputs at a time (batches outer, candidates inner): memory of one batch, not of the task
    with autocast(device, bf16):
        for x, y, *choices in batches:
            inputs = block_io(model, x)[0]  # [layer] -> (B, T, C)
            for i in candidates:
                with hybrid(blocks, [i], students):
                    h = inputs[i]
                    for block in blocks[i:]:
                        h = block(h)
                rows[i].append(batch_scores(*model.head(h, y), y, *choices))
    return gather_dict({i: reduce(r, metric) for i, r in rows.items()})  # the same on every process

@torch.no_grad()
def greedy_replace(model, students, batches, device="cpu", bf16=False, resume=None, metric="loss"):
    """Algorithm 1, the search, on fixed validation ("search") batches:

        M <- teacher;  S <- all layers
        while S not empty:
            l* <- argbest_{l in S} P(M with layer l replaced by its student)
            M <- M with l* replaced;  S <- S \\ {l*};  record (l*, P)

    P is the metric: loss (lower is better) or accuracy (higher). Returns the teacher's P and the
    trajectory [{"k", "layer", "val_<metric>", "rel_change", "candidates"}, ...] (candidates:
    every layer's P that round, None where already linear), and leaves `model` as the teacher it
    was given. Ties go to the lower layer index. resume: a Partial holding the rounds done so
    far, continued after them and saved after each."""
    model.eval()
    blocks, sign, key = model.transformer.h, METRICS[metric], "val_" + metric
    teacher = evaluate(model, batches, device, bf16)[metric]
    trajectory = restore_greedy(resume, len(blocks))
    linear = [t["layer"] for t in trajectory]
    with hybrid(blocks, linear, students):  # the teacher comes back when the search ends
        for k in range(len(trajectory) + 1, len(blocks) + 1):
            scores = greedy_round(model, students, batches, linear, device, bf16, metric)
            best = min(scores, key=lambda i: sign * scores[i])
            linear.append(best)
            swap_in(blocks, [best], students)
            trajectory.append({"k": k, "layer": best, key: scores[best], "rel_change": (scores[best] - teacher) / (abs(teacher) or 1),
                               "candidates": [scores.get(i) for i in range(len(blocks))]})
            change = f"{100 * trajectory[-1]['rel_change']:+.2f}%" if metric == "loss" else \
                f"{100 * (scores[best] - teacher):+.2f} pt"  # an accuracy: in points
            print(f"greedy   round {k}/{len(blocks)} | " + " ".join(f"L{i} {l:.4f}" for i, l in scores.items()) +
                  f" | replace L{best} -> {scores[best]:.4f} ({change})")
            if resume:
                resume.save(trajectory=trajectory)
    return teacher, trajectory

# ---- 4. M_best and M_opt, scored on held-out test batches (Algorithm 1, the end) ----

def select_models(teacher, trajectory, tolerance, metric="loss", keep_full=-1):
    """M_best: the best P seen (the teacher counts; ties go to more linear layers). M_opt: the
    most linear layers with P >= P_min, a tolerance below the teacher's P: for loss,
    loss <= (1 + tolerance) x the teacher's; for accuracy, accuracy >= (1 - tolerance) x.
    keep_full=K >= 0 instead: the hybrid of the search with K full-attention layers (a budget)."""
    sign, key = METRICS[metric], "val_" + metric
    points = [(0, teacher)] + [(t["k"], t[key]) for t in trajectory]
    order = [t["layer"] for t in trajectory]
    k_best = min(points, key=lambda p: (sign * p[1], -p[0]))[0]
    k_opt = len(order) - keep_full if keep_full >= 0 else \
        max(k for k, p in points if sign * p <= sign * (1 + sign * tolerance) * teacher)
    pick = lambda k: {"linear_layers": sorted(order[:k]), key: points[k][1]}
    return pick(k_best), pick(k_opt)

def print_trajectory(result, cfg):
    """Algorithm 1's outcome for one task: the metric on the search and on the test batches, an
    accuracy with its standard error sqrt(p (1 - p) / n) over the n items (or scored tokens) it
    averages (tokens of one window are not independent: there it is a lower bound). Two hybrids'
    accuracies differ meaningfully when more than ~2.8 (2 sqrt 2) standard errors apart (a little
    less, as they are scored on the same items)."""
    metric, test, n = result["metric"], result["test"], result.get("n", {})
    teacher = result["teacher_" + metric]
    err = metric != "loss" and bool(n)  # an accuracy: its standard error, and changes in points
    show = lambda p, split: f"{p:.4f}" + (f" ± {math.sqrt(p * (1 - p) / n[split]):.4f}" if err else "")
    vs = lambda p, p0: f"{100 * (p - p0):+7.2f} pt" if err else f"{100 * (p - p0) / (abs(p0) or 1):+9.2f}%"
    ws, wt = (24, 24) if err else (15, 13)
    print(f"\n  k | replaced | {'search ' + metric:{ws}s} | vs teacher | {'test ' + metric:{wt}s} | vs teacher"
          + (f"   ({n['search']} search / {n['test']} test {'items' if result.get('multiple_choice') else 'targets'})" if n else "") +
          f"\n  0 |        - | {show(teacher, 'search'):>{ws}s} |            | {show(test[0][metric], 'test'):>{wt}s} |")
    for t in result["trajectory"]:
        print(f"{t['k']:3d} |       L{t['layer']} | {show(t['val_' + metric], 'search'):>{ws}s} | {vs(t['val_' + metric], teacher)} | "
              f"{show(test[t['k']][metric], 'test'):>{wt}s} | {vs(test[t['k']][metric], test[0][metric])}")
    budget = f"{cfg.keep_full} full layer{'s' if cfg.keep_full != 1 else ''}" if cfg.keep_full >= 0 else \
        f"tolerance {100 * cfg.tolerance:g}%"
    for name, m in (("M_best", result["m_best"]), (f"M_opt ({budget})", result["m_opt"])):
        print(f"{name}: linear layers {m['linear_layers']}, search {metric} {m['val_' + metric]:.4f}, test " +
              ", ".join(f"{p} {m['test_' + p]:.4f}" for p in METRICS if p != "acc_norm" or result["multiple_choice"]))

def algorithm_1(model, students, batches, test_batches, cfg, device="cpu", bf16=False, resume=None):
    """Algorithm 1 for one task: search on `batches`, select M_best and M_opt, score on `test_batches`.
    Returns {"metric", "teacher_<metric>", "trajectory", "m_best", "m_opt", "test", "n", "multiple_choice", "seconds"}."""
    t0, metric = time.time(), task_metric(cfg.metric, batches)
    teacher, trajectory = greedy_replace(model, students, batches, device, bf16, resume, metric)
    m_best, m_opt = select_models(teacher, trajectory, cfg.tolerance, metric, cfg.keep_full)
    order, test = [t["layer"] for t in trajectory], []
    for k in range(len(order) + 1):  # P^test of every model of the trajectory, the teacher (k = 0) to all-linear
        with hybrid(model.transformer.h, order[:k], students):
            test.append(evaluate(model, test_batches, device, bf16))
    for m in (m_best, m_opt):
        m.update({f"test_{p}": test[len(m["linear_layers"])][p] for p in METRICS})
    result = {"metric": metric, f"teacher_{metric}": teacher, "trajectory": trajectory, "m_best": m_best, "m_opt": m_opt, "test": test,
              "n": {"search": n_scored(batches), "test": n_scored(test_batches)}, "multiple_choice": len(batches[0]) == 3,
              "seconds": time.time() - t0}
    print_trajectory(result, cfg)
    return result

# ---- 5. target tasks (§4, Fig. 3): their batches and the metric P are in tasks.py ----

def run_tasks(model, students, tasks, cfg, device="cpu", bf16=False, done=None):
    """Per task: Algorithm 1 on its batches (or its result from `done`, {name: result}); then
    every task's M_opt scored on every task's test batches. Returns the report's "tasks" and
    "tasks_cross_eval", or nothing when lm is the only task."""
    if list(tasks) == ["lm"]:
        return {}
    results = {}
    for name, (batches, test_batches) in tasks.items():
        print(f"\n---- task {name} ----" + (" (its search is the one above)" if name in (done or {}) else ""))
        results[name] = (done or {}).get(name) or algorithm_1(model, students, batches, test_batches, cfg, device, bf16)
    if "copy" in tasks:  # the same passages and targets without the repeat: what the first copy is worth
        results["copy"]["teacher_plain"] = evaluate(model, without_repeat(tasks["copy"][1]), device, bf16)
    names, cross = list(tasks), []
    for row in names:  # is a hybrid chosen for one task still good at the others?
        with hybrid(model.transformer.h, results[row]["m_opt"]["linear_layers"], students):
            cross.append([evaluate(model, tasks[col][1], device, bf16) for col in names])
    w = max(10, *map(len, names))
    full = {n: " ".join(f"L{i}" for i in range(len(students)) if i not in results[n]["m_opt"]["linear_layers"]) or "-"
            for n in names}
    fw = max(11, *map(len, full.values()))
    metric = {n: results[n]["metric"] for n in names}  # a column in its own task's metric
    print(f"\ntasks    each task's M_opt (a row: the task it was searched for, the layers it keeps full "
          f"attention) scored on each task's test items (a column: test {', '.join(f'{n} {m}' for n, m in metric.items())})")
    print(f"tasks    {'M_opt of':{w}s} | {'full layers':{fw}s} | " + " | ".join(f"{c:>{w}s}" for c in names))
    for name, row in zip(names, cross):
        print(f"tasks    {name:{w}s} | {full[name]:{fw}s} | " + " | ".join(f"{p[metric[c]]:>{w}.4f}" for p, c in zip(row, names)))
    return {"tasks": results, "tasks_cross_eval": {"rows": names, "cols": names,  # every metric, the table printed one
                                                   **{m: [[p[m] for p in row] for row in cross] for m in METRICS}}}

# ---- 6. the pipeline ----

def run_name(config):
    """A run's folder under --out_dir (config: its settings as a dict): the student, then each lever
    pulled away from dtr.py's default, so that students with other levers never share a folder
    (gla, gla-window16, jet-short_conv4-out_norm)."""
    pulled = [k if v is True else f"{k}{v}" for k, v in ((k, config.get(k, Config.__dataclass_fields__[k].default))
                                                          for k in LEVERS) if v != Config.__dataclass_fields__[k].default]
    return "-".join([config["student"]] + pulled)

def load_students(path, students, device, key=None):
    """Load distilled students (refused if `key` differs); returns the seconds their training took."""
    saved = load_file(path, "delete it to distill again", ("key", "students"))
    if key:
        check_resumable(saved["key"], key, path)
    try:
        for s, sd in zip(students, saved["students"], strict=True):
            s.load_state_dict(sd)
    except (ValueError, RuntimeError) as e:
        raise DtrError(f"{path} does not fit this run's students ({first_words(e)}); delete it to distill again") from None
    return saved.get("train_s")

def save_hybrids(model, students, result, cfg, meta, folder, task="lm"):
    """A task's M_best and M_opt as checkpoints, <folder>/m_best.pt and m_opt.pt, with the layout as
    Hugging Face-style hybrid configs spell it (layer_types)."""
    for name in ("m_best", "m_opt"):
        result[name]["layer_types"] = ["linear_attention" if i in result[name]["linear_layers"] else "full_attention"
                                       for i in range(cfg.n_layer)]
        with hybrid(model.transformer.h, result[name]["linear_layers"], students):
            atomic_save({"model_args": dataclasses.asdict(model.config), "state_dict": model.state_dict(),
                         "config": dataclasses.asdict(cfg), "meta": meta, "student": cfg.student, "task": task,
                         **result[name]}, os.path.join(folder, name + ".pt"))

def read_inputs(cfg):
    """What a run reads before it works: the device, the data, every task's batches (task files read and
    checked), so that a bad file is refused before the run folder is claimed (main)."""
    device, bf16 = choose_device(cfg.device)
    torch.manual_seed(cfg.seed)
    train, val, meta = load_data(cfg)
    return device, bf16, train, val, meta, task_batches(cfg, val, meta, device)  # tasks: {task: (search, test batches)}

def run(cfg, inputs=None):
    """Teacher -> students -> distillation -> greedy replacement -> M_best, M_opt -> tasks -> report.
    inputs: read_inputs(cfg), if read already."""
    t_start = time.time()
    device, bf16, train, val, meta, tasks = inputs or read_inputs(cfg)
    data = f"{cfg.dataset} in {cfg.init_from}'s tokens" if cfg.init_from else meta["dataset"]
    print(f"data     {data}: {len(train):,} train / {len(val):,} val tokens, vocab {len(meta['vocab']):,}")

    # 0. the teacher, reused or trained
    teacher_reused = os.path.exists(os.path.join(cfg.out_dir, "teacher.pt"))  # (then made with this run's settings)
    model, teacher_train_s, t_teacher = load_or_train(cfg, train, val, meta, device, bf16)
    model.requires_grad_(False)

    # 1-2. the students, distilled (or their saved result reused)
    t0, run_dir = time.time(), os.path.join(cfg.out_dir, run_name(vars(cfg)))
    students_path = os.path.join(run_dir, "students.pt")
    distill_key = {"teacher_sha256": weights_sha256(model), "student": cfg.student,
                   "distill_iters": cfg.distill_iters, "distill_lr": cfg.distill_lr,
                   "distill_batch_size": cfg.distill_batch_size, "gate_init": cfg.gate_init, "seed": cfg.seed,
                   **student_levers(cfg)}
    students = [s.to(device) for s in make_students(model, cfg.student, **student_levers(cfg))]
    s = students[0]
    print(f"students {cfg.student} | short conv {cfg.short_conv or 'none'} | rotations {s.rotary} | output norm "
          f"{'yes' if s.out_norm is not None else 'no'} | window {s.window or 'none'}" + (" (auto)" if cfg.window < 0 else ""))
    students_reused = os.path.exists(students_path)
    if students_reused:
        distill_train_s = load_students(students_path, students, device, distill_key)
        print(f"distill  reusing {students_path}")
    else:
        resume = Partial(students_path[:-3] + ".partial.pt", distill_key)
        distill_blocks(model, students, train, cfg, device, bf16, resume)
        distill_train_s = resume.elapsed()
        atomic_save({"key": distill_key, "students": [s.state_dict() for s in students], "train_s": distill_train_s}, students_path)
        resume.done()
    mse, rel_mse = block_mse(model, students, tasks["lm"][0], device, bf16)
    if not all(math.isfinite(m) for m in mse):
        raise DtrError(f"distilled students produce NaN/inf (per-layer MSE {mse}); delete {students_path}, "
                       f"lower --distill_lr and rerun")
    t_distill = time.time() - t0
    print("distill  per-layer MSE " + " ".join(f"L{i} {m:.5f}" for i, m in enumerate(mse)))
    print("distill  relative MSE  " + " ".join(f"L{i} {r:.4f}" for i, r in enumerate(rel_mse)))

    # 3-4. greedy replacement on the search batches, M_best and M_opt, scored on the test batches
    t0 = time.time()
    resume = Partial(os.path.join(run_dir, "greedy.partial.json"), {**distill_key, "val_batches": cfg.val_batches,
                     "batch_size": cfg.batch_size, "metric": task_metric(cfg.metric, tasks["lm"][0])})
    lm = algorithm_1(model, students, *tasks["lm"], cfg, device, bf16, resume)
    t_greedy = time.time() - t0
    save_hybrids(model, students, lm, cfg, meta, run_dir)

    # 5. one search per target task, sharing the teacher and the students (§4), each its own M_best and M_opt
    tasks_report = run_tasks(model, students, tasks, cfg, device, bf16, done={"lm": lm})
    for name in tasks_report and list(tasks)[1:]:
        save_hybrids(model, students, tasks_report["tasks"][name], cfg, meta, os.path.join(run_dir, "tasks", name), name)
    report = {
        "dataset": meta["dataset"], "student": cfg.student, "device": device, "config": dataclasses.asdict(cfg),
        "command": ("python " if world() == 1 else f"torchrun --standalone --nproc_per_node={world()} ") +
                   shlex.join([os.path.basename(sys.argv[0])] + sys.argv[1:]), "cwd": os.getcwd(), "machine": machine(),
        "date": time.strftime("%Y-%m-%d"), "n_layer": cfg.n_layer, "tolerance": cfg.tolerance, "keep_full": cfg.keep_full, "metric": lm["metric"],
        "teacher": {f"val_{lm['metric']}": lm[f"teacher_{lm['metric']}"], "train_s": teacher_train_s, "init_from": cfg.init_from,
                    "reused": teacher_reused},
        "distill": {"mse": mse, "rel_mse": rel_mse, "train_s": distill_train_s, "reused": students_reused},
        **{k: lm[k] for k in ("trajectory", "m_best", "m_opt", "test")}, **tasks_report,
        "timings_s": {"teacher": t_teacher, "distill": t_distill, "greedy": t_greedy, "total": time.time() - t_start},
    }
    atomic_save(report, os.path.join(run_dir, "report.json"))
    resume.done()
    print(f"timings  teacher {t_teacher:.0f}s | distill {t_distill:.0f}s | greedy {t_greedy:.0f}s | "
          f"total {time.time() - t_start:.0f}s")

    # what the two models write
    if cfg.sample_tokens:
        print(f"\n---- sample from the teacher ----\n{sample_text(model, meta, cfg.sample_tokens, device, cfg.seed)}")
        with hybrid(model.transformer.h, lm["m_opt"]["linear_layers"], students):
            print(f"\n---- sample from M_opt (linear layers {lm['m_opt']['linear_layers']}) ----\n"
                  f"{sample_text(model, meta, cfg.sample_tokens, device, cfg.seed)}")
    print(f"\nwrote {run_dir}/: report.json, students.pt, m_best.pt, m_opt.pt" +
          (f", and each task's in tasks/<task>/ ({', '.join(list(tasks)[1:])})" if len(tasks) > 1 else "") +
          f" (another sample: {shlex.join(['python', 'dtr.py', '--sample', os.path.join(run_dir, 'm_opt.pt'), '--seed', str(cfg.seed + 1)])})")
    return report

def load_hybrid(path, device):
    """The teacher, or a hybrid with students where its checkpoint says (m_best.pt, m_opt.pt)."""
    fix = "pass a checkpoint a run of this project wrote: teacher.pt, m_best.pt or m_opt.pt"
    prepare = lambda model, ckpt: swap_in(model.transformer.h, ckpt.get("linear_layers", []),
                                          make_students(model, ckpt.get("student", "gla"),
                                                        **student_levers(ckpt.get("config", {}))))
    return load_model(path, device, fix, prepare)

# ---- 7. command line ----

def sample(cfg):
    """--sample: generate from a checkpoint this project wrote."""
    device, _ = choose_device(cfg.device)
    model, ckpt = load_hybrid(cfg.sample, device)
    print(f"{cfg.sample}: linear layers {ckpt.get('linear_layers', [])}" +
          "".join(f", {name} {ckpt[k]:.4f}" for k, name in (("val_loss", "search loss"), ("test_loss", "test loss"),
                                                             ("test_accuracy", "test accuracy")) if k in ckpt))
    print(sample_text(model, ckpt["meta"], cfg.sample_tokens, device, cfg.seed))

def parse_args(argv=None):
    return configure(Config, argv, __doc__, PRESETS)

def main(argv=None):
    def job(cfg):
        if cfg.sample:
            return sample(cfg)
        inputs = read_inputs(cfg)  # every file checked first: a refused run leaves the folder untouched
        with claim(cfg.out_dir):  # one run at a time in a folder (the command line's; run() itself takes none)
            return run(cfg, inputs)
    cli(job, parse_args, argv)

if __name__ == "__main__":
    main()
