"""
Tests of the experiments: python -m pytest -q experiments/test_experiments.py (CPU, a minute).
The placement baselines choose the layers they say on a constructed case; the README's speed-up
table compares each model in its faster mode; each script runs on a finished tiny run from its
documented command; readme.py writes beside the run unless told to update the project, and
refuses files of an older version in one line. The check that the checkout is untouched looks at
the project's files, not the runs beside it. Then the experiments through their main, in this
process: a saved result is reused only for the same students, batches and settings (else rescored
or refused, by name); runs are compared on the same teacher's weights; every table and picture
copes with 0, NaN and one item; a change is shown in the run's unit; a run's paths resolve from
anywhere; the oracle names which rounds are within the noise.
"""
import contextlib
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # dtr.py sits one folder up; conftest.py has set up the environment

import pytest  # noqa: E402
import torch  # noqa: E402
from conftest import launch, refused, refused_here, tiny_gpt  # noqa: E402

import baselines  # noqa: E402
import bench_decode  # noqa: E402
import distill_curve  # noqa: E402
import dtr  # noqa: E402
import finetune  # noqa: E402
import tasks  # noqa: E402
import layer_selectors  # noqa: E402
import levers  # noqa: E402
import oracle  # noqa: E402
import readme  # noqa: E402
import train_teacher  # noqa: E402
from plumbing import DtrError, atomic_save, load_file, parse_config  # noqa: E402

class Zero(torch.nn.Module):
    """A stand-in student that removes its layer's attention."""
    def forward(self, x, cache=None):
        return torch.zeros_like(x)

def test_placement_baselines_choose_the_stated_layers():
    # a 4-layer model whose "students" zero their layer's attention: each baseline's layer choices
    # are known in advance, and each of its losses is the plain val loss of the model it names
    model = tiny_gpt(n_layer=4, seed=2)
    teacher_attn = [block.attn for block in model.transformer.h]
    students = [Zero() for _ in range(4)]
    batches = train_teacher.fixed_batches(torch.randint(20, (2000,), generator=torch.Generator().manual_seed(0)), 32, 4, 2, "cpu")
    traj = [{"val_loss": 0.0, "candidates": [3.0, 1.0, 4.0, 2.0]}] * 4  # round 1: L1 best, then L3, L0, L2
    b = baselines.placement_baselines(model, students, batches, traj, [0.0] * 4, n_random=3)
    assert [block.attn for block in model.transformer.h] == teacher_attn  # the teacher is handed back
    assert b["uniform_layers"] == [[2], [1, 3], [0, 2, 3], [0, 1, 2, 3]]
    assert b["importance_order"] == [1, 3, 0, 2]
    assert all(sorted(order) == [0, 1, 2, 3] for order in b["random_orders"])
    for k, layers in ((1, [1]), (2, [1, 3]), (3, [0, 1, 3])):
        with dtr.hybrid(model.transformer.h, layers, students):
            assert b["importance"][k - 1] == pytest.approx(tasks.evaluate(model, batches)["loss"], rel=1e-6)
    assert b["uniform"][3] == pytest.approx(b["importance"][3]) == pytest.approx(b["random_mean"][3])  # all swapped

def test_decode_speedups_compare_each_model_in_its_faster_mode():
    """The speed-ups: eager against eager, and each model in its faster mode (here the teacher is
    faster eager, the linear model compiled), never a slowed-down teacher."""
    row = lambda model, eager, compiled, cache: {"model": model, "context": 8192, "prefill_s": 0.1, "cache_bytes": cache,
                                                 "decode_tok_s": eager, "decode_tok_s_batch8": 8 * eager,
                                                 "decode_tok_s_compiled": compiled, "decode_tok_s_batch8_compiled": 8 * compiled}
    bench = {"n_layer": 6, "n_embd": 128, "new_tokens": 32, "repeats": 5, "machine": "test", "batch": 8, "compiled": True,
             "rows": [row("teacher", 100.0, 80.0, 1000), row("m_opt", 150.0, 200.0, 500), row("all_linear", 200.0, 400.0, 10)]}
    text = "\n".join(bench_decode.markdown(bench, {"m_opt": {"linear_layers": [0, 1, 2]}}))
    assert "| 8192 | all-linear | 2.0x | 2.0x | 4.0x | 4.0x | 100x |" in text  # all_linear: 200 / 100 eager, 400 / 100 best
    assert "| 8192 | M_opt (3/6 linear) | 1.5x | 1.5x | 2.0x | 2.0x | 2x |" in text  # m_opt

def checkout_files(root=ROOT):
    """The project's own files, each with its time and size (None: gone): git's tracked files and the
    untracked ones it does not ignore, so a run writing into out/ or data/ beside the suite is not
    the project changing; without git, every file but those folders' and caches."""
    try:
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout
        names = []
        for d, dirs, found in os.walk(root):
            dirs[:] = [x for x in dirs if x not in (".git", "__pycache__", ".pytest_cache", "out", "data")]
            names += [os.path.relpath(os.path.join(d, n), root) for n in found]
    files = {}
    for n in filter(None, names):
        path = os.path.join(root, n)
        files[n] = (os.stat(path).st_mtime_ns, os.stat(path).st_size) if os.path.exists(path) else None
    return files

def test_the_checkout_check_sees_the_projects_files_not_the_users_runs(tmp_path):
    """A run writing into the ignored out/ and data/ beside the suite leaves the project's files as they
    were; a changed tracked file, a new source file and a deleted one do not."""
    git = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / ".gitignore").write_text("out/\ndata/\n")
    (tmp_path / "dtr.py").write_text("x = 1\n")
    (tmp_path / "kernel.py").write_text("y = 1\n")
    git("add", ".gitignore", "dtr.py", "kernel.py")
    before = checkout_files(tmp_path)
    for run in ("out/shakespeare_char-cpu/gla/report.json", "data/shakespeare_char/train.bin"):
        (tmp_path / run).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / run).write_text("a run going on")
    assert checkout_files(tmp_path) == before
    (tmp_path / "dtr.py").write_text("x = 22\n")
    (tmp_path / "new.py").write_text("")
    (tmp_path / "kernel.py").unlink()
    after = checkout_files(tmp_path)
    assert {n for n in after if after[n] != before.get(n)} == {"dtr.py", "new.py", "kernel.py"}

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    """A finished tiny run with two tasks, and each experiment run on it from its documented command
(the oracle before the selectors, which then read its table)."""
    out = tmp_path_factory.mktemp("out")
    dtr.main(["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(out), "--task", "lm,copy,cloze", "--cloze_items", "40",
              "--sample_tokens", "5"])
    run_dir = str(out / "gla")
    assert "greedy is" in launch([sys.executable, "experiments/baselines.py", run_dir, "--n_random", "2"])  # as scripts
    launch([sys.executable, "experiments/bench_decode.py", run_dir, "--contexts", "16,32", "--new_tokens", "2", "--repeats", "1",
            "--batch", "2"])  # (torch.compile's imports warn in a test process)

    def said(module, argv):  # the others through their main, in this process: the same code, no second start-up
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            module.main([run_dir] + argv)
        return out.getvalue()
    assert "finetune 3 steps" in said(finetune, ["--iters", "3"])
    assert "greedy rounds won by" in said(oracle, ["--draws", "20"])
    assert "select   test" in said(layer_selectors, ["--n_random", "2"])
    assert "curve    gla 50 steps" in said(distill_curve, ["--students", "gla", "--steps", "50", "--name", "own"])  # tiny's budget
    for name in ("baselines", "finetune", "decode_bench", "oracle", "layer_selectors"):
        assert os.path.exists(os.path.join(run_dir, name + ".json"))
    return run_dir

def test_results_are_written_beside_the_run_and_the_checkout_is_untouched(finished_run):
    """python experiments/readme.py <run>, as a user types it: RESULTS.md and the pictures beside the
    run, every experiment's table in it, and not one file of the checkout written."""
    before = checkout_files()
    said = launch([sys.executable, "experiments/readme.py", finished_run])
    assert checkout_files() == before
    assert "the project's own files are untouched" in said
    with open(os.path.join(finished_run, "RESULTS.md")) as f:
        text = f.read()
    with open(os.path.join(finished_run, "report.json")) as f:
        report = json.load(f)
    for part in ("| placement |", "Finetuning 3 steps", "| copy |", "speed-up, eager", "(assets/m_opt-layers.png)",
                 "| k | layouts | greedy: test loss |", "| reverse_greedy |", "-selectors.png)", "-distill.png)",
                 "`cloze`, searched by accuracy on 20 items, tested on 20 others", "| test drop vs teacher |",
                 "| M_opt of (row) on (col), test | lm (loss) | copy (loss) | cloze (accuracy) |",
                 "| own: distill_lr 0.004, distill_batch_size 8, gate_init span, seed 1337 | `gla` | 50 |",
                 f"| {report['test'][0]['loss']:.4f} |"):  # the headline table: the teacher's test loss
        assert part in text
    assert os.path.exists(os.path.join(finished_run, "assets", "m_opt-layers.png"))
    assert "is this checkout" in refused([finished_run, "--out", ROOT], "experiments/readme.py")  # its files stay its own
    assert checkout_files() == before

def test_distill_curve_at_the_runs_own_budget_is_the_run(finished_run):
    # the experiment distils as dtr.py does: at the run's own settings and steps, the same all-linear model
    with open(os.path.join(finished_run, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(finished_run, "distill_curve_own.json")) as f:
        curve = json.load(f)
    (r,) = curve["runs"]
    assert (r["steps"], r["student"]) == (report["config"]["distill_iters"], "gla")
    assert r["all_linear_test_loss"] == pytest.approx(report["test"][-1]["loss"], rel=1e-6)
    assert r["mse"] == pytest.approx(report["distill"]["mse"], rel=1e-5)
    assert r["order"] == [t["layer"] for t in report["trajectory"]]

@pytest.mark.parametrize("flags,says", [
    (["--set", "n_layer=3"], "--set n_layer: not a setting"), (["--set", "gate_init=1,x"], "--set x: not a setting"),
    (["--name", "../x"], "--name '../x': use letters"), (["--steps", "0"], "--steps '0'"), (["--students", "mamba"], "'mamba'")])
def test_distill_curve_refuses_what_it_would_not_do(flags, says):
    with pytest.raises(DtrError, match=re.escape(says)):
        parse_config(distill_curve.CurveConfig, ["run"] + flags, "")

def test_distill_curve_checks_a_set_value_as_dtr_does(finished_run):
    before = sorted(os.listdir(finished_run))
    assert "unknown --gate_init 'foo'" in refused([finished_run, "--set", "gate_init=foo"], "experiments/distill_curve.py")
    assert sorted(os.listdir(finished_run)) == before

def test_distillation_seeds_are_compared_by_rank_correlation():
    run = lambda seed, order, linear: {"student": "gla", "steps": 400, "order": order, "all_linear_test_loss": 1.7,
                                       "settings": {"distill_lr": 4e-3, "seed": seed}, "m_opt_1pct": {"linear_layers": linear}}
    curves = {"a": {"runs": [run(1, [0, 1, 2, 3], [0, 1])]}, "b": {"runs": [run(2, [3, 2, 1, 0], [2, 3]), run(3, [0, 1, 3, 2], [0, 1])]}}
    (line, _) = distill_curve.seeds_markdown(curves)
    assert "seeds 1, 2, 3" in line and "L0 L1 L2 L3; L3 L2 L1 L0; L0 L1 L3 L2" in line  # rho: -1, 0.8 (1 vs 3), -0.8
    assert "Spearman correlation between seeds -1.00 to +0.80 (mean -0.33)" in line and "2/4 linear [2, 3]" in line
    assert distill_curve.spearman([2, 0, 1], [2, 0, 1]) == 1.0
    curves["b"]["runs"][1]["settings"]["distill_lr"] = 8e-3  # another setting: not a seed of the same run
    (line, _) = distill_curve.seeds_markdown(curves)
    assert "seeds 1, 2 (" in line and "L0 L1 L3 L2" not in line

def test_update_project_fills_the_checkouts_own_files(finished_run, tmp_path):
    """--update_project rewrites what sits between the markers of the checkout's README.md and
    RESULTS.md (here a copy of the checkout), and nothing outside them."""
    for f in [p for p in os.listdir(ROOT) if p.endswith(".py") and not p.startswith(("test_", "conftest"))] + ["README.md", "RESULTS.md"]:
        shutil.copy(os.path.join(ROOT, f), tmp_path / f)
    shutil.copytree(HERE, tmp_path / "experiments", ignore=shutil.ignore_patterns("__pycache__"))
    launch([sys.executable, str(tmp_path / "experiments" / "readme.py"), finished_run, "--update_project"])
    outside = lambda text, marker: text.split(f"<!-- {marker}:start -->")[0] + text.split(f"<!-- {marker}:end -->")[1]
    with open(os.path.join(finished_run, "report.json")) as f:
        command = f"`{json.load(f)['command']}`"  # names the run's temporary folder: in no committed file
    for name, marker in (("README.md", "headline"), ("RESULTS.md", "results")):
        with open(os.path.join(ROOT, name)) as f, open(tmp_path / name) as g:
            old, new = f.read(), g.read()
        assert outside(new, marker) == outside(old, marker) and command in new and command not in old
    assert os.path.exists(tmp_path / "assets" / "m_opt-layers.png")

@pytest.mark.parametrize("name,drop", [pytest.param("report", ("test", "metric"), id="report-before-test-batches"),
                                       pytest.param("baselines", ("search", "test"), id="baselines-before-splits")])
def test_files_of_an_older_version_are_refused_by_name(finished_run, tmp_path, name, drop):
    """A report or result from an older version: one line saying so and what to do, no KeyError."""
    old = tmp_path / "gla"
    shutil.copytree(finished_run, old)
    with open(old / f"{name}.json") as f:
        obj = json.load(f)
    with open(old / f"{name}.json", "w") as f:  # the older format: flat baselines, a report without test batches
        json.dump({**{k: v for k, v in obj.items() if k not in drop}, **(obj["search"] if name == "baselines" else {})}, f)
    err = refused([str(old)], "experiments/readme.py")
    assert "comes from an older version" in err and f"{name}.json" in err and "rerun" in err

# ---- the exhaustive oracle ----

def oracle_case(n_layer=3):
    """A random tiny GPT with its (undistilled) gla students, and two fixed batches."""
    model = tiny_gpt(n_layer, seed=3)
    students = dtr.make_students(model, "gla")
    for s in students:  # a gate and feature maps away from their start, so each student changes its layer
        torch.nn.init.normal_(s.fmap_q, std=0.5)
    data = torch.randint(20, (3000,), generator=torch.Generator().manual_seed(1))
    return model, students, train_teacher.fixed_batches(data, 32, 4, 2, "cpu")

def test_oracle_scores_every_layout_as_a_plain_forward_would():
    """The prefix-sharing walk against a plain loop that evaluates each of the 2^L hybrids from
    scratch: the same loss and accuracy for every layout (rel 1e-6: the same fp32 ops in the same
    order, so only summation order could differ), in 2^(L+1) - 2 block forwards per batch."""
    model, students, batches = oracle_case()
    teacher_attn = [block.attn for block in model.transformer.h]
    rows, forwards = oracle.score_layouts(model, students, batches)
    assert [block.attn for block in model.transformer.h] == teacher_attn
    assert forwards == len(batches) * (2 ** 4 - 2)
    losses = oracle.metric_table(rows, "loss")
    assert len(set(losses)) == 8  # every layout its own model
    for mask in range(8):
        with dtr.hybrid(model.transformer.h, oracle.layers_of(mask), students):
            plain = tasks.evaluate(model, batches)
        assert losses[mask] == pytest.approx(plain["loss"], rel=1e-6)
        assert oracle.metric_table(rows, "accuracy")[mask] == pytest.approx(plain["accuracy"], rel=1e-6)

def test_greedy_replayed_on_the_table_is_greedy():
    model, students, batches = oracle_case()
    rows, _ = oracle.score_layouts(model, students, batches)
    teacher, trajectory = dtr.greedy_replace(model, students, batches)
    replayed_teacher, replayed = oracle.replay_greedy(rows, "loss")
    assert [t["layer"] for t in replayed] == [t["layer"] for t in trajectory]
    assert [t["val_loss"] for t in replayed] == pytest.approx([t["val_loss"] for t in trajectory], rel=1e-6)
    assert replayed_teacher == pytest.approx(teacher, rel=1e-6)

def test_oracle_ranks_and_noise_on_a_built_table():
    """Three layers, two batches, losses chosen by hand: layouts 0b011 and 0b101 tie for the
    best pair on search, 0b110 is best on test; greedy's order [1, 0, 2] reaches 0b011."""
    search = {0: 1.0, 0b001: 1.3, 0b010: 1.1, 0b100: 1.2, 0b011: 1.4, 0b101: 1.4, 0b110: 1.5, 0b111: 2.0}
    test = {**search, 0b110: 1.35, 0b010: 1.25}
    ks = oracle.per_k(search, test, [1, 0, 2], "loss")
    assert [p["n_layouts"] for p in ks] == [1, 3, 3, 1]
    assert ks[1]["greedy"] == {"layers": [1], "search": 1.1, "test": 1.25, "rank_search": 1, "rank_test": 2}
    assert ks[2]["greedy"]["rank_search"] == 1 and ks[2]["best_by_search"]["layers"] == [0, 1]  # the tie: lower mask
    assert ks[2]["best_on_test"]["layers"] == [1, 2] and ks[2]["greedy"]["rank_test"] == 2
    # per batch: the round-1 winner L1 beats the runner-up L2 by 0.1 and 0.1 (se 0), round 2's L0
    # beats L2 by +0.3 and -0.1 (mean 0.1, paired se 0.2): one round of two within 2 se
    rows = [[(v, 0, 1), (v, 0, 1)] for v in (search[m] for m in range(8))]
    rows[0b011] = [(1.2, 0, 1), (1.6, 0, 1)]
    rows[0b110] = [(1.5, 0, 1), (1.5, 0, 1)]
    n = oracle.noise(rows, "loss", tolerance=0.5, draws=20)  # greedy on these rows: [1, 0, 2] again
    assert [(r["winner"], r["runner_up"]) for r in n["rounds"]] == [(1, 2), (0, 2)]
    assert n["rounds"][0]["margin"] == pytest.approx(0.1) and n["rounds"][0]["paired_se"] == pytest.approx(0)
    assert n["rounds"][1]["margin"] == pytest.approx(0.1) and n["rounds"][1]["paired_se"] == pytest.approx(0.2)
    assert n["within_2se"] == 1

def test_oracle_on_a_finished_run(finished_run):
    with open(os.path.join(finished_run, "oracle.json")) as f:
        r = json.load(f)
    assert r["greedy_reproduced"] < 1e-6  # the run's own greedy losses, from the table
    for p in r["per_k"]:
        assert p["best_by_search"]["search"] <= p["greedy"]["search"] and p["best_on_test"]["test"] <= p["greedy"]["test"]
        assert 1 <= p["greedy"]["rank_test"] <= p["n_layouts"]
    assert r["block_forwards"]["oracle"] == sum(r["batches"].values()) * (2 ** (r["n_layer"] + 1) - 2)
    assert [x["within_2se"] for x in r["rounds"]] == [not x["margin"] > 2 * x["paired_se"] for x in r["rounds"]]
    assert r["within_2se"] == sum(x["within_2se"] for x in r["rounds"])

# ---- the layer selectors ----

def test_each_selector_picks_the_layers_its_rule_names():
    """Three layers and a hand-built metric table where the rules disagree: restoring L1 alone
    helps most (restore_one keeps it), but after it, restoring L2 beats L0 (reverse greedy keeps
    L1, then L2); distillation error and importance read their own numbers."""
    table = {(): 1.0, (0,): 1.1, (1,): 1.05, (2,): 1.3, (0, 1): 1.6, (0, 2): 1.4, (1, 2): 1.5, (0, 1, 2): 2.0}
    score = lambda layers: table[tuple(sorted(layers))]
    report = {"trajectory": [{"layer": 2, "candidates": [1.2, 1.05, 1.1]}, {"layer": 0}, {"layer": 1}],
              "distill": {"rel_mse": [0.5, 0.1, 0.3]}}
    s = layer_selectors.select(report, score, 3, "loss", n_random=3, seed=0)
    assert s["greedy"] == [[2], [0, 2], [0, 1, 2]]
    assert s["importance"] == [[1], [1, 2], [0, 1, 2]]
    assert s["uniform"] == [[1], [0, 2], [0, 1, 2]]
    assert s["restore_one"] == [[2], [0, 2], [0, 1, 2]]  # all-linear minus L2 is the worst: L2 helps least
    assert s["reverse_greedy"] == [[0], [0, 2], [0, 1, 2]]  # restored L1, then L2 (1.1 < 1.3), then L0
    assert s["distill_error"] == [[1], [1, 2], [0, 1, 2]]
    assert all(s[f"random{n}"][-1] == [0, 1, 2] and len({tuple(x) for x in s[f"random{n}"]}) == 3 for n in range(3))

def test_selector_scores_from_the_oracle_table_equal_a_forward():
    model, students, batches = oracle_case()
    rows, _ = oracle.score_layouts(model, students, batches)
    table = torch.tensor(rows, dtype=torch.float64)
    from_table, direct = (layer_selectors.Scores(model, students, batches, t) for t in (table, None))
    for layers in ([], [1], [0, 2], [0, 1, 2]):
        assert [r[0] for r in from_table(layers)] == pytest.approx([r[0] for r in direct(layers)], rel=1e-6)

def test_selectors_on_a_finished_run(finished_run):
    with open(os.path.join(finished_run, "layer_selectors.json")) as f, open(os.path.join(finished_run, "report.json")) as g:
        r, report = json.load(f), json.load(g)
    assert r["from_oracle_table"] == {"search": True, "test": True}
    with open(os.path.join(finished_run, "oracle.json")) as f:  # the oracle's best, on these very batches
        o = json.load(f)
    assert r["oracle"]["test_best_on_test"] == pytest.approx([p["best_on_test"]["test"] for p in o["per_k"][1:]], rel=1e-12)
    assert r["oracle"]["test_best_by_search"] == pytest.approx([p["best_by_search"]["test"] for p in o["per_k"][1:]], rel=1e-12)
    assert r["test"]["greedy"] == pytest.approx([t["loss"] for t in report["test"][1:]], rel=1e-6)  # the run's own numbers
    assert len({round(r["test"][n][-1], 6) for n in layer_selectors.NAMES}) == 1  # k = L: every selector is all-linear

# ---- the experiments as the command line runs them, in this process (seconds, not a process each) ----

def run_main(module, argv, capsys):
    """module.main(argv) as its command line runs it: (exit code, what it printed)."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    said = capsys.readouterr()
    return code, said.out + said.err

def copy_run(finished_run, dest):
    """The finished run's --out_dir (teacher.pt, gla/ with every experiment's file) copied to dest:
    its run folder there."""
    shutil.copytree(os.path.dirname(finished_run), dest)
    return str(dest / os.path.basename(finished_run))

def edit_json(path, change):
    with open(path) as f:
        obj = json.load(f)
    obj = change(obj) or obj
    with open(path, "w") as f:
        json.dump(obj, f)

@pytest.fixture(scope="module")
def one_batch_run(finished_run, tmp_path_factory):
    """A copy of the finished run whose oracle scored one search and one test batch (--val_batches 1,
    the run has 2), and what the oracle printed."""
    run = copy_run(finished_run, tmp_path_factory.mktemp("one") / "out")
    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        oracle.main([run, "--val_batches", "1", "--draws", "2"])
    return run, said.getvalue()

def test_selectors_reuse_no_oracle_table_of_other_students_and_readme_refuses_stale_results(finished_run, tmp_path, capsys):
    """The students distilled again after the experiments: the selectors score every layout anew and
    leave the oracle out, saying why in one line; readme.py refuses each older result by name."""
    run = copy_run(finished_run, tmp_path / "out")
    saved = load_file(os.path.join(run, "students.pt"), "")
    first = next(iter(saved["students"][0]))
    saved["students"][0][first] = saved["students"][0][first] + 0.01  # other students, the same teacher and settings
    atomic_save(saved, os.path.join(run, "students.pt"))
    code, said = run_main(layer_selectors, [run, "--n_random", "2"], capsys)
    assert code == 0 and f"select   {run}/oracle.pt not reused: it was computed from other students; " in said
    with open(os.path.join(run, "layer_selectors.json")) as f:
        r = json.load(f)
    assert r["from_oracle_table"] == {"search": False, "test": False} and "oracle" not in r
    with open(os.path.join(finished_run, "layer_selectors.json")) as f:
        assert r["test"]["greedy"] != json.load(f)["test"]["greedy"]  # scored with the new students
    code, said = run_main(readme, [run, "--out", str(tmp_path / "results")], capsys)
    assert code == 2 and said.strip().splitlines()[-1] == (f"error: {run}/baselines.json was computed from other students: "
                                                           f"not the run now in {run}; rerun python experiments/baselines.py {run}")

def test_selectors_compare_with_the_oracle_only_on_the_same_batches(one_batch_run, capsys):
    """An oracle run on other batches (--val_batches 1): its table is not reused and its "best on
    test" is not shown beside selectors scored on the run's own test batches."""
    run, _ = one_batch_run
    code, said = run_main(layer_selectors, [run, "--n_random", "2"], capsys)
    assert code == 0 and f"select   {run}/oracle.pt not reused: it was computed from other search batches; " in said
    with open(os.path.join(run, "layer_selectors.json")) as f:
        assert "oracle" not in json.load(f)

def test_oracle_says_which_rounds_are_within_the_noise(one_batch_run):
    """On one search batch no round has a standard error: every round is named as within the noise,
    none as a clear win."""
    run, said = one_batch_run
    with open(os.path.join(run, "oracle.json")) as f:
        r = json.load(f)
    assert r["batches"] == {"search": 1, "test": 1} and all(x["within_2se"] and math.isnan(x["paired_se"]) for x in r["rounds"])
    rounds = ", ".join(f"k={x['k']} L{x['winner']} over L{x['runner_up']} by {x['margin']:.4f} (se nan)" for x in r["rounds"])
    assert (f"noise    3 of 3 greedy rounds won by at most 2 paired standard errors over the search batches (a tie, or one "
            f"batch with no se, among them): {rounds}; by more: none\n") in said

def test_a_tied_round_is_within_the_noise():
    """A round won by 0 with a standard error of 0 (two candidates equal on every batch) is a tie, not
    a clear win; a margin of 0.1 on every batch (se 0) is one. The line names each in its group."""
    v = {0: 1.0, 0b001: 1.3, 0b010: 1.1, 0b100: 1.2, 0b011: 1.4, 0b101: 1.4, 0b110: 1.4, 0b111: 2.0}
    rows = [[(v[m], 0, 1), (v[m], 0, 1)] for m in range(8)]  # round 1: L1 by 0.1 over L2; round 2: L0 ties L2 at 1.4
    n = oracle.noise(rows, "loss", tolerance=0.5, draws=4)
    assert [(x["winner"], x["runner_up"], x["within_2se"]) for x in n["rounds"]] == [(1, 2, False), (0, 2, True)]
    assert oracle.rounds_text(n) == ("1 of 2 greedy rounds won by at most 2 paired standard errors over the search batches "
                                     "(a tie, or one batch with no se, among them): k=2 L0 over L2 by 0.0000 (se 0.0000); "
                                     "by more: k=1 L1 over L2 by 0.1000 (se 0.0000)")

def test_students_are_compared_only_on_the_same_teacher(finished_run, tmp_path, capsys):
    """Two runs made with the same --out_dir name: side by side (with a rank correlation) only when
    their teacher's weights are the same, and they were scored on the same batches; their pictures
    keep apart."""
    runs = []
    for name in ("char", "bpe"):
        os.makedirs(tmp_path / name / "run" / "gla")
        for f in ("report.json", "students.pt"):
            shutil.copy(os.path.join(finished_run, f), tmp_path / name / "run" / "gla" / f)
        edit_json(tmp_path / name / "run" / "gla" / "report.json", lambda r: r["config"].update(out_dir="run"))
        runs.append(str(tmp_path / name / "run" / "gla"))
    args = [",".join(runs), "--out", str(tmp_path / "results")]
    assert run_main(readme, args, capsys)[0] == 0
    text = (tmp_path / "results" / "RESULTS.md").read_text()
    assert "Students on the same teacher (`run/teacher.pt`, weights sha256 " in text and "`gla`-`gla` +1.00" in text
    assert "(assets/run-gla-tasks.png)" in text and "(assets/run-gla-2-tasks.png)" in text
    edit_json(os.path.join(runs[1], "report.json"), lambda r: r["config"].update(val_batches=6))  # the same teacher, other batches
    assert run_main(readme, args, capsys)[0] == 0
    text = (tmp_path / "results" / "RESULTS.md").read_text()
    assert "Students on the same teacher" not in text and "Spearman" not in text
    assert "scored on other batches, not compared: `run/gla` with dataset shakespeare_char, block_size 64, batch_size 8, " \
           "val_batches 2, metric loss; `run/gla` with dataset shakespeare_char, block_size 64, batch_size 8, val_batches 6" in text
    saved = load_file(os.path.join(runs[1], "students.pt"), "")
    saved["key"]["teacher_sha256"] = "0" * 64  # another teacher, in a folder of the same name
    atomic_save(saved, os.path.join(runs[1], "students.pt"))
    assert run_main(readme, args, capsys)[0] == 0
    assert "Students on the same teacher" not in (tmp_path / "results" / "RESULTS.md").read_text()

@pytest.mark.parametrize("edit,says", [
    pytest.param(lambda t: t[::-1], "teacher.pt was made from another text", id="edited"),
    pytest.param(lambda t: t + "#", "teacher.pt was made from another text", id="new-character"),
])
def test_experiments_refuse_a_run_whose_text_changed_since(finished_run, data_dir, tmp_path, capsys, edit, says):
    """The run's text edited in place after the run: every experiment that scores the run on its data
    refuses in one line, none scores the old teacher on the new tokens (bench_decode times random ones)."""
    run = copy_run(finished_run, tmp_path / "out")
    os.makedirs(tmp_path / "data" / "shakespeare")
    text = open(os.path.join(data_dir, "shakespeare", "input.txt")).read()
    (tmp_path / "data" / "shakespeare" / "input.txt").write_text(edit(text))
    edit_json(os.path.join(run, "report.json"), lambda r: r["config"].update(data_dir=str(tmp_path / "data")))
    for module, argv in ((baselines, ["--n_random", "2"]), (oracle, ["--draws", "2"]), (layer_selectors, ["--n_random", "2"]),
                         (finetune, ["--iters", "1"]), (distill_curve, ["--students", "gla", "--steps", "2"])):
        code, said = run_main(module, [run] + argv, capsys)
        assert code == 2 and said.strip().splitlines()[-1].startswith("error: ") and says in said, said
        assert "put the run's text, tokenizer and --init_from folder back as they were" in said

def every_float(obj, value):
    """obj with each float in it (not the ints: layers, counts) replaced by value."""
    if isinstance(obj, dict):
        return {k: every_float(v, value) for k, v in obj.items()}
    if isinstance(obj, list):
        return [every_float(v, value) for v in obj]
    return value if isinstance(obj, float) else obj

def one_item(obj):
    """A report whose every task was searched and tested on one item (or target) each."""
    for t in obj.get("tasks", {}).values():
        t["n"] = {"search": 1, "test": 1}
    return obj

@pytest.mark.parametrize("case,says", [
    pytest.param("zero", ["| 1 | L{layer} | 0.0000 | +0.00% | 0.0000 | +0.00% | 0.0000 |", "accuracy 0.000 -> 0.000 (+0.0 pt)",
                          "At the teacher's test accuracy of 0.000 the standard error is no measure of the noise."], id="zero"),
    pytest.param("nan", ["| 1 | L{layer} | nan | +nan% | nan | +nan% | nan |", "accuracy nan -> nan (+nan pt)"], id="nan"),
    pytest.param("one item", ["`cloze`, searched by accuracy on 1 item, tested on 1 other (± one standard error"], id="one-item"),
])
def test_every_table_and_picture_copes_with_a_zero_a_nan_and_one_item(finished_run, tmp_path, capsys, case, says):
    """Every number of the run and of each experiment's file 0 (a teacher's accuracy of 0 among them),
    or NaN; or a task of one item: RESULTS.md and every picture are written, each change as it is."""
    run = copy_run(finished_run, tmp_path / "out")
    for f in os.listdir(run):
        if f.endswith(".json"):
            edit_json(os.path.join(run, f), lambda obj: every_float(obj, 0.0) if case == "zero" else
                      every_float(obj, float("nan")) if case == "nan" else one_item(obj))
    code, said = run_main(readme, [run, "--out", str(tmp_path / "results")], capsys)
    assert code == 0, said
    text = (tmp_path / "results" / "RESULTS.md").read_text()
    with open(os.path.join(run, "report.json")) as f:
        layer = json.load(f)["trajectory"][0]["layer"]
    for part in says:
        assert part.format(layer=layer) in text
    assert len(os.listdir(tmp_path / "results" / "assets")) == 6  # baselines, selectors, tasks, distill, decode, m_opt-layers

def test_a_table_says_what_was_measured_in_the_runs_unit(finished_run, data_dir, tmp_path, capsys):
    """A run searched by acc_norm: the lm task is counted in tokens, not items, and each change
    against the teacher is in points, exactly as the console printed it."""
    out = tmp_path / "out"
    os.makedirs(out / "gla")
    shutil.copy(os.path.join(os.path.dirname(finished_run), "teacher.pt"), out)
    shutil.copy(os.path.join(finished_run, "students.pt"), out / "gla")  # only greedy runs again
    dtr.main(["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(out), "--task", "lm,cloze", "--cloze_items", "40",
              "--sample_tokens", "0", "--metric", "acc_norm"])
    console = capsys.readouterr().out
    first = next(line for line in console.splitlines() if line.startswith("  1 |"))  # the lm task's round k = 1
    assert first.split("|")[3].strip().endswith(" pt")
    assert run_main(readme, [str(out / "gla"), "--out", str(tmp_path / "results")], capsys)[0] == 0
    text = (tmp_path / "results" / "RESULTS.md").read_text()
    with open(out / "gla" / "report.json") as f:
        report = json.load(f)
    t, n = report["trajectory"][0], report["tasks"]["lm"]["n"]
    assert f"| 1 | L{t['layer']} | {t['val_acc_norm']:.4f} | {first.split('|')[3].strip()} | " in text
    assert f"`lm`, searched by acc_norm on {n['search']:,} tokens, tested on {n['test']:,} others (" in text
    assert "items, tested" not in text.split("`lm`, searched")[1].split("\n")[0]

@pytest.mark.parametrize("case", ["dot", "recorded cwd", "from the run folder", "no teacher", "the out_dir"])
def test_paths_resolve_from_anywhere(finished_run, data_dir, tmp_path, monkeypatch, capsys, case):
    """A run made in a project folder with a relative --data_dir (and --out_dir), read as `.` from
    inside its run folder, or from another folder: through the cwd its report recorded, or (an older
    report, or a project moved since) from where the run folder sits. A missing teacher is named,
    and nothing is offered for deletion."""
    proj = tmp_path / "proj"
    run = copy_run(finished_run, proj / "out" / "tiny")
    shutil.copytree(data_dir, proj / "data")
    recorded = case == "recorded cwd"
    edit_json(os.path.join(run, "report.json"), lambda r: r.update(
        cwd=str(proj) if recorded else "/a/project/moved/since",
        config={**r["config"], "data_dir": "data", "out_dir": str(proj / "out" / "tiny") if recorded else "out/tiny"}))
    if case == "no teacher":
        os.remove(proj / "out" / "tiny" / "teacher.pt")
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(run if case == "dot" else tmp_path / "elsewhere")
    code, said = run_main(finetune, ["." if case == "dot" else os.path.dirname(run) if case == "the out_dir" else run,
                                     "--iters", "1"], capsys)
    if case == "the out_dir":  # the folder above the run's: its run folders named
        assert code == 2 and said.strip().splitlines()[-1] == f"error: {os.path.dirname(run)} is an --out_dir; give one of " \
                                                               f"its run folders: {run}"
        return
    if case == "no teacher":
        assert code == 2 and said.strip().splitlines()[-1] == (
            f"error: {proj}/out/tiny/teacher.pt is missing: give a run folder where python dtr.py wrote it, beside its "
            f"teacher.pt (<out_dir>/<student>)")
        return
    assert code == 0, said
    with open(os.path.join(run, "finetune.json")) as f, open(os.path.join(run, "report.json")) as g:
        assert json.load(f)["teacher"]["before"] == pytest.approx(json.load(g)["test"][0]["loss"], rel=1e-6)  # the run's own data

def test_levers_reproduce_the_run_and_show_the_windows_own_work(finished_run):
    """python experiments/levers.py: the default variant at the run's settings is the run itself; a
    window variant reports its linear branch switched off; the table has a row for each."""
    launch([sys.executable, "experiments/levers.py", finished_run, "--variants", "gla; jet window=4 short_conv=4"])
    with open(os.path.join(finished_run, "levers.json")) as f:
        res = json.load(f)
    with open(os.path.join(finished_run, "report.json")) as f:
        report = json.load(f)
    gla, jet = res["runs"]
    assert gla["all_linear_test_loss"] == pytest.approx(report["test"][-1]["loss"], rel=1e-6)
    assert gla["window_only_test_loss"] is None and jet["window_only_test_loss"] > 0
    assert jet["levers"] == {"window": 4, "short_conv": 4}
    assert gla["cache_floats"] < res["full_cache_floats"] * 4  # a state, not a growing KV cache
    table = launch([sys.executable, "experiments/levers.py", finished_run, "--markdown"])
    assert "| `jet` short_conv=4 window=4 |" in table and "| gpt2 | full attention at context" in table
    summary = launch([sys.executable, "experiments/levers.py", finished_run, "--summary"])  # the run itself, as dtr.py ran it
    assert f"| GPT-2-shaped, learned positions ({report['test'][0]['loss']:.4f}) | `gla` | {report['test'][-1]['loss']:.4f} (" in summary

def test_the_default_variants_fit_the_run():
    """levers.py without --variants: the windows at most an eighth of the run's context, the rotations'
    places only on a rotary teacher, so that every default variant is one dtr.py would run."""
    tiny, cpu_llama = levers.default_variants(64, rotary=False), levers.default_variants(128, rotary=True)
    assert {kw.get("window") for _, kw in tiny} == {None, 8} and not any("rotary" in kw for _, kw in tiny)
    assert {kw.get("window") for _, kw in cpu_llama} == {None, 16} and ("gla", {"rotary": "after"}) in cpu_llama

def test_a_lever_table_of_another_teacher_or_other_batches_is_refused(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "out")
    assert run_main(levers, [run, "--variants", "gla"], capsys)[0] == 0
    path, key = os.path.join(run, "levers.json"), json.load(open(os.path.join(run, "levers.json")))["key"]
    for field, value, says in (("teacher_sha256", "0" * 64, "from another teacher"), ("val_batches", 6, "with val_batches 6, not 2")):
        edit_json(path, lambda r: r.update(key={**key, field: value}))
        assert refused_here(levers.main, [run, "--markdown"], capsys) == \
            f"error: {path} was computed {says}: not the run now in {run}; rerun python experiments/levers.py {run}"
    edit_json(path, lambda r: r.update(key=key))
    assert run_main(levers, [run, "--markdown"], capsys)[0] == 0

def test_bench_decode_keeps_a_rotary_runs_own_window_at_every_context(data_dir, tmp_path, capsys):
    """A rotary teacher's auto window is the run's (an eighth of its context, 8 at the tiny preset), not an
    eighth of the longest context benchmarked: its cache is the same whatever --contexts are given."""
    dtr.main(["--preset", "tiny", "--arch", "llama", "--max_iters", "2", "--distill_iters", "2", "--sample_tokens", "0",
              "--data_dir", data_dir, "--out_dir", str(tmp_path / "out")])
    run, cache = str(tmp_path / "out" / "gla"), {}
    for contexts in ("64", "64,512"):
        assert run_main(bench_decode, [run, "--contexts", contexts, "--new_tokens", "1", "--repeats", "1", "--batch", "1",
                                       "--no-compile"], capsys)[0] == 0
        bench = json.load(open(os.path.join(run, "decode_bench.json")))
        cache[contexts] = {(w["model"], w["context"]): w["cache_bytes"] for w in bench["rows"]}
        assert bench["own_student"] == "gla"
    assert cache["64"]["gla", 64] == cache["64,512"]["gla", 64] == cache["64,512"]["gla", 512]

@pytest.mark.parametrize("variants,says", [("mamba", "'mamba' is not a student"), ("gla foo=1", "'foo=1' is not a lever"),
                                           ("gla window=x", "--window"), ("gdn rotary=after", "")])
def test_levers_refuse_a_variant_dtr_would_refuse(finished_run, variants, says, capsys):
    if not says:  # a variant dtr.py's own checks refuse (Config.check), before any distillation
        says = "--rotary after places a rotary teacher's rotations, and this teacher has learned positions instead"
    assert says in refused_here(levers.main, [finished_run, "--variants", variants], capsys)

def test_bench_decode_times_each_student_whose_cache_does_not_grow(finished_run, tmp_path, capsys):
    """--students gla,jet: a row per model and context; each all-linear model's cache the same at
    both contexts (a fixed-size state: the int "n" and tensors of several shapes) while the teacher's
    KV cache grows; each its row of speed-up and cache ratio in the markdown. A bad variant: one line."""
    run = copy_run(finished_run, tmp_path / "out")  # (the finished run's own decode_bench.json stays its own)
    code, said = run_main(bench_decode, [run, "--contexts", "64,128", "--new_tokens", "2", "--repeats", "1", "--batch", "2",
                                         "--students", "gla,jet", "--no-compile"], capsys)
    assert code == 0, said
    with open(os.path.join(run, "decode_bench.json")) as f:
        bench = json.load(f)
    cache = {(w["model"], w["context"]): w["cache_bytes"] for w in bench["rows"]}
    assert bench["students"] == ["gla", "jet"] and bench["own_student"] == "gla"
    assert sorted(cache) == sorted((m, n) for m in ("teacher", "m_opt", "gla", "jet") for n in (64, 128))
    assert cache["teacher", 64] < cache["teacher", 128]
    for m in ("gla", "jet"):
        assert 0 < cache[m, 64] == cache[m, 128] < cache["teacher", 128]
    with open(os.path.join(run, "report.json")) as f:
        text = "\n".join(bench_decode.markdown(bench, json.load(f)))
    for m, n in itertools.product(("gla", "jet"), (64, 128)):
        assert re.search(rf"\| {n} \| all-linear `{m}` \| [0-9.]+x \| [0-9.]+x \| {round(cache['teacher', n] / cache[m, n])}x \|", text)
    assert "--students: 'gnd' is not a student" in refused_here(bench_decode.main, [run, "--students", "gla,gnd"], capsys)
    assert "--window 16 is more than an eighth of the context (64)" in refused_here(bench_decode.main, [run, "--students",
                                                                                                       "jet window=16"], capsys)
