"""
Tests of the experiments: python -m pytest -q experiments/test_experiments.py (CPU, a minute).
The placement baselines choose the layers they say on a constructed case; each script runs on a
finished tiny run from its documented command; the README's speed-up table compares each model
in its faster mode.
"""
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # dtr.py sits one folder up; conftest.py has set up the environment

import pytest  # noqa: E402
import torch  # noqa: E402

import baselines  # noqa: E402
import dtr  # noqa: E402
import train_teacher  # noqa: E402
import readme  # noqa: E402

class Zero(torch.nn.Module):
    """A stand-in student that removes its layer's attention."""
    def forward(self, x, cache=None):
        return torch.zeros_like(x)

def test_placement_baselines_choose_the_stated_layers():
    # a 4-layer model whose "students" zero their layer's attention: each baseline's layer choices
    # are known in advance, and each of its losses is the plain val loss of the model it names
    torch.manual_seed(2)
    model = train_teacher.GPT(train_teacher.GPTConfig(block_size=32, vocab_size=20, n_layer=4, n_head=2, n_embd=16)).eval()
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
            assert b["importance"][k - 1] == pytest.approx(dtr.evaluate(model, batches)["loss"], rel=1e-6)
    assert b["uniform"][3] == pytest.approx(b["importance"][3]) == pytest.approx(b["random_mean"][3])  # all swapped

def test_decode_speedups_compare_each_model_in_its_faster_mode():
    """The speed-ups: eager against eager, and each model in its faster mode (here the teacher is
    faster eager, the linear model compiled), never a slowed-down teacher."""
    row = lambda model, eager, compiled, cache: {"model": model, "context": 8192, "prefill_s": 0.1, "cache_bytes": cache,
                                                 "decode_tok_s": eager, "decode_tok_s_batch8": 8 * eager,
                                                 "decode_tok_s_compiled": compiled, "decode_tok_s_batch8_compiled": 8 * compiled}
    bench = {"n_layer": 6, "n_embd": 128, "new_tokens": 32, "repeats": 5, "machine": "test", "batch": 8, "compiled": True,
             "rows": [row("teacher", 100.0, 80.0, 1000), row("m_opt", 150.0, 200.0, 500), row("all_linear", 200.0, 400.0, 10)]}
    text = "\n".join(readme.decode_markdown(bench, {"m_opt": {"linear_layers": [0, 1, 2]}}))
    assert "| 8192 | 2.0x | 2.0x | 4.0x | 4.0x | 100x |" in text  # all_linear: 200 / 100 eager, 400 / 100 best
    assert "| 8192 | 1.5x | 1.5x | 2.0x | 2.0x | 2x |" in text  # m_opt

def run_script(name, args):
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    r = subprocess.run([sys.executable, os.path.join(HERE, name)] + args, cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout

def test_experiments_on_a_finished_run(tmp_path):
    """Each experiment from its documented command, on a finished tiny run, and the results
    regenerated from what they wrote (into copies of README.md and RESULTS.md)."""
    data = tmp_path / "data" / "shakespeare"
    os.makedirs(data)
    shared = os.path.join(ROOT, "..", "shared", "data", "shakespeare", "input.txt")
    src = shared if os.path.exists(shared) else os.path.join(ROOT, "data", "shakespeare", "input.txt")
    with open(src) as f, open(data / "input.txt", "w") as g:
        g.write(f.read())
    run_dir = str(tmp_path / "out" / "gla")
    dtr.main(["--preset", "tiny", "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "out"),
              "--task", "lm,copy", "--sample_tokens", "5"])
    assert "greedy is" in run_script("baselines.py", [run_dir, "--n_random", "2"])
    assert "finetune 3 steps" in run_script("finetune.py", [run_dir, "--iters", "3"])
    run_script("bench_decode.py", [run_dir, "--contexts", "16,32", "--new_tokens", "2", "--repeats", "1", "--batch", "2"])
    for name in ("baselines", "finetune", "decode_bench"):
        assert os.path.exists(os.path.join(run_dir, name + ".json"))
    runs = readme.load_runs([run_dir])
    text = "\n".join(readme.run_markdown(runs[0]))
    for part in ("| placement |", "Finetuning 3 steps", "| copy |", "speed-up, eager"):
        assert part in text
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    assert f"{report['test'][0]['loss']:.4f}" in "\n".join(readme.headline(runs))
