"""
Exercise 7 of EXERCISES.md, one answer: reverse greedy. Algorithm 1 walks from the teacher down
to all-linear; this walks back up, restoring full attention one layer per round where it helps
most. On a finished run it prints the two trajectories side by side, on the run's own teacher,
students and search batches (forward greedy's from the run's report).

    python dtr.py --preset tiny --dataset shakespeare_char                  # a finished run, ~15 s
    python experiments/reverse_greedy.py out/shakespeare_char-tiny/gla      # this file's reverse_greedy
    python experiments/reverse_greedy.py out/shakespeare_char-tiny/gla --solution my_solution.py   # yours
"""
import argparse
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # (the exercise checks load this file with runpy)
import frame  # noqa: E402  first: it puts the project's root on sys.path

import dtr  # noqa: E402
import tasks  # noqa: E402

def reverse_greedy(model, students, batches):
    """Start all-linear; each round restores full attention in the layer where restoring helps
    most. A round of Algorithm 1 with the roles swapped: on the all-linear model, the teacher's
    attentions are the 'students' to swap in. Returns [{"k": linear layers left after the round,
    "layer": the one restored, "val_loss", "candidates"}, ...], L entries; hands the teacher back."""
    blocks = model.transformer.h
    teacher = [b.attn for b in blocks]
    restored, trajectory = [], []
    for b, s in zip(blocks, students):
        b.attn = s
    try:
        for k in range(len(blocks) - 1, -1, -1):
            losses = dtr.greedy_round(model, teacher, batches, restored)
            best = min(losses, key=losses.get)
            restored.append(best)
            blocks[best].attn = teacher[best]
            trajectory.append({"k": k, "layer": best, "val_loss": losses[best],
                               "candidates": [losses.get(i) for i in range(len(blocks))]})
    finally:
        for b, a in zip(blocks, teacher):
            b.attn = a
    return trajectory

def measure(run_dir, search):
    """Forward greedy (from the run's report) next to `search` (a reverse_greedy), on the run's own teacher,
    students and the validation batches greedy searched on, one line per number of linear layers k."""
    cfg, report, model, students, (_, val, _) = frame.load_run(run_dir, "cpu")
    batches = tasks.lm_batches(cfg, val, "cpu")  # greedy's own search batches
    teacher_loss, L = report["teacher"]["val_loss"], cfg.n_layer
    forward = {t["k"]: t for t in report["trajectory"]}
    reverse = {t["k"]: t for t in search(model, students, batches)}
    print(f"{run_dir}: {cfg.student} students, {cfg.val_batches} validation batches of {cfg.batch_size}; "
          f"teacher val loss {teacher_loss:.4f}")
    print("  k | forward greedy: linear layers  val loss | reverse greedy: linear layers  val loss")
    order = [forward[k]["layer"] for k in range(1, L + 1)]  # the layers forward greedy swapped, in turn
    restored = [reverse[k]["layer"] for k in range(L - 1, -1, -1)]  # the layers reverse greedy restored, in turn
    for k in range(L + 1):
        f_layers, f_loss = sorted(order[:k]), forward[k]["val_loss"] if k else teacher_loss
        r_layers = sorted(set(range(L)) - set(restored[:L - k]))
        r_loss = reverse[k]["val_loss"] if k < L else forward[L]["val_loss"]  # k = L: the all-linear start
        print(f"{k:>3} | {str(f_layers):>28} {f_loss:9.4f} | {str(r_layers):>28} {r_loss:9.4f}")

def main():
    parser = argparse.ArgumentParser(description="Exercise 7: reverse greedy next to forward greedy (Algorithm 1) "
                                     "on a finished run of python dtr.py")
    parser.add_argument("run_dir", help="a finished run's folder, e.g. out/shakespeare_char-tiny/gla")
    parser.add_argument("--solution", metavar="FILE", help="measure the reverse_greedy of your solution file "
                        "(e.g. my_solution.py) instead of this file's")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.run_dir, "report.json")):
        parser.error(f"{args.run_dir} holds no report.json: run python dtr.py first, e.g. "
                     f"python dtr.py --preset tiny --dataset shakespeare_char")
    fn = reverse_greedy
    if args.solution:
        if not os.path.isfile(args.solution):
            parser.error(f"--solution {args.solution}: no such file")
        fn = runpy.run_path(args.solution).get("reverse_greedy")
        if fn is None:
            parser.error(f"--solution {args.solution} defines no reverse_greedy")
    measure(args.run_dir, fn)

if __name__ == "__main__":
    main()
