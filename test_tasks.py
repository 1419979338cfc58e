"""
Tests of the target tasks (tasks.py) and their searches (dtr.run_tasks): python -m pytest -q test_tasks.py

The copy task's batches and a perfect copier -> each task keeps the layer it needs (a constructed
case) -> multiple-choice scores against a hand computation and the harness's formula, disjoint
search and test items, the cloze task from the validation split only -> end to end on the tiny
preset: token tasks, multiple-choice tasks, bad task files, task names that must not collide.

Floats are compared by relative error ||a - b|| / ||b||; 1e-5 unless said otherwise.
"""
import json
import os
import shutil

import pytest
import torch

import dtr
import prepare
import tasks
import train_teacher
from conftest import fingerprint, periodic_gpt, refused, refused_here, rel_err, tiny_gpt, with_out_dir
from plumbing import DtrError
from train_teacher import val_loss

# ---- target tasks ----

def test_copy_batches_repeat_the_passage_and_score_only_the_second_copy():
    data = torch.randint(20, (1000,), generator=torch.Generator().manual_seed(0))
    (x, y), = tasks.copy_batches(data, 32, 4, 1, "cpu")
    assert x.shape == y.shape == (4, 32) and torch.equal(x[:, 16:], x[:, :16])
    assert (y[:, :16] == -1).all() and (y[:, -1] == -1).all()
    assert torch.equal(y[:, 16:-1], x[:, 17:])  # next-token targets, inside the second copy
    # the model's loss skips the -1 targets: it is the mean over the 15 scored positions per row
    logits, loss = tiny_gpt()(x, y)
    ref = torch.nn.functional.cross_entropy(logits[:, 16:-1].flatten(0, 1), y[:, 16:-1].flatten())
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)

class Copier(torch.nn.Module):
    """Predicts, at position t, the token at t + 1 - shift: with shift = half a context, a
    perfect induction head on the copy task."""
    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def forward(self, idx, targets):
        logits = 30.0 * torch.nn.functional.one_hot(idx.roll(self.shift - 1, dims=1), 20).float()  # (B, T, 20)
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

def test_perfect_copier_has_near_zero_copy_loss():
    batches = tasks.copy_batches(torch.randint(20, (2000,), generator=torch.Generator().manual_seed(0)), 32, 8, 2, "cpu")
    assert val_loss(Copier(shift=16), batches) < 1e-6
    assert val_loss(Copier(shift=15), batches) > 10  # off by one: the mask and alignment matter
    # accuracy on the second copy: a perfect copier predicts every scored token, the off-by-one none
    assert tasks.evaluate(Copier(shift=16), batches)["accuracy"] == 1.0
    assert tasks.evaluate(Copier(shift=15), batches)["accuracy"] < 0.2

class Damaged(torch.nn.Module):
    """A "student": the teacher's attention plus a large fixed vector at positions [lo, hi)."""
    def __init__(self, attn, lo, hi):
        super().__init__()
        self.attn, self.lo, self.hi = attn, lo, hi
        self.kick = 3 * torch.randn(16, generator=torch.Generator().manual_seed(lo))

    def forward(self, x, cache=None):
        y = self.attn(x).clone()
        y[:, self.lo:self.hi] += self.kick
        return y

def test_each_task_keeps_the_layer_it_needs():
    # 2 layers, T = 32. The L0 student is wrong only at positions >= 16, which by causality never
    # reach positions < 16; the L1 student is wrong only at positions < 16, and nothing follows L1.
    # "early" scores positions < 16 and must keep L1; "copy" scores >= 16 and must keep L0.
    model, data = periodic_gpt(n_layer=2)
    students = [Damaged(model.transformer.h[0].attn, 16, 32), Damaged(model.transformer.h[1].attn, 0, 16)]
    early = lambda test: [(x, y.masked_fill(torch.arange(32) >= 16, -1)) for x, y in train_teacher.fixed_batches(data, 32, 8, 2, "cpu", test=test)]
    batches = {name: (f(False), f(True)) for name, f in
             (("early", early), ("copy", lambda test: tasks.copy_batches(data, 32, 8, 2, "cpu", test)))}
    out = dtr.run_tasks(model, students, batches, dtr.Config(tolerance=0.02))
    res, cross = out["tasks"], out["tasks_cross_eval"]
    assert res["early"]["m_opt"]["linear_layers"] == [0] and res["copy"]["m_opt"]["linear_layers"] == [1]
    assert [t["layer"] for t in res["early"]["trajectory"]] == [0, 1]
    assert [t["layer"] for t in res["copy"]["trajectory"]] == [1, 0]
    # diagonal: each M_opt scores what its own search said; off it, the other task's hybrid does damage
    for i, name in enumerate(cross["rows"]):
        assert cross["loss"][i][i] == pytest.approx(res[name]["m_opt"]["test_loss"], rel=1e-5)
        assert cross["loss"][1 - i][i] > 1.5 * res[name]["test"][0]["loss"]
    assert res["copy"]["teacher_plain"]["accuracy"] > 0.9  # targets aligned with the passage: off by one gives ~0

def test_choice_scores_by_hand():
    # two items, log-likelihoods given: rows ((item, choice, gold, chars, tokens), ll)
    rows = [((0, 0, 1, 2, 2), -1.0), ((0, 1, 1, 6, 6), -1.2),  # item 0, gold 1: acc picks 0 (-1.0 > -1.2),
            ((1, 0, 1, 3, 3), -3.0), ((1, 1, 1, 4, 4), -2.0), ((1, 2, 1, 1, 1), -2.5)]  # acc_norm 1 (-0.2 > -0.5)
    # item 1, gold 1: acc picks 1 (-2.0 the largest); acc_norm -1.0, -0.5, -2.5 picks 1 too
    assert tasks.choice_scores(rows) == {"accuracy": 0.5, "acc_norm": 1.0, "loss": pytest.approx((1.2 + 2.0) / (6 + 4)), "n": 2}
    assert tasks.choice_scores(rows[::-1])["accuracy"] == 0.5  # the order rows come in does not matter
    tie = [((0, 0, 1, 1, 1), -1.0), ((0, 1, 1, 1, 1), -1.0)]
    assert tasks.choice_scores(tie)["accuracy"] == 0  # a tie goes to the first choice, as numpy's argmax

def test_each_task_is_searched_by_its_own_metric_unless_one_is_given():
    x = y = torch.zeros(1, 4, dtype=torch.long)
    token, choice = [(x, y)], [(x, y, [(0, 0, 0, 1, 1)])]  # batches (x, y) and (x, y, choices)
    assert (tasks.task_metric("auto", token), tasks.task_metric("auto", choice)) == ("loss", "accuracy")
    assert {tasks.task_metric(m, b) for m in ("loss", "acc_norm") for b in (token, choice)} == {"loss", "acc_norm"}
    assert [tasks.task_metric(m, choice) for m in ("loss", "acc_norm")] == ["loss", "acc_norm"]

CHARS = "abcdefghijklmnopqrst"  # the 20 tokens of tiny_gpt
META = {"tokenizer": "char", "vocab": list(CHARS), "dataset": "test"}

def write_items(path, items):
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return str(path)

def test_choice_batches_score_each_choice_given_its_context(tmp_path):
    # the rows a model scores are LM-Evaluation-Harness's: log p(choice | context) summed over the
    # choice's tokens, from one forward of the (left-cut) context + choice; here against that
    # formula computed row by row, on a random GPT whose window (32) is shorter than item 1's context
    items = [{"context": "abcde", "choices": ["fg", "hij", "k"], "gold": 1},
             {"context": "st" * 20, "choices": ["abc", "s"], "gold": 0},  # 40 + 3 tokens: cut to 33 from the left
             {"context": "q", "choices": ["rstabc", "ttt"], "gold": 1}]
    path = write_items(tmp_path / "mc.jsonl", items)
    read, cut = tasks.read_items(path, META, 32)
    assert cut == 1 and [i["where"] for i in read] == [1, 2, 3]
    model = tiny_gpt()
    batches = tasks.choice_batches(read, 32, 4, "cpu")  # 7 rows: batches of 4 and 3, an item split between them
    assert [len(c) for _, _, c in batches] == [4, 3]
    want = []
    for i, item in enumerate(items):
        for j, choice in enumerate(item["choices"]):
            ids = [CHARS.index(c) for c in item["context"] + choice][-33:]  # the harness's (context + choice)[-(T + 1):]
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0], -1)  # (T, vocab)
            n = len(choice)
            ll = sum(logp[len(ids) - 1 - n + t, ids[len(ids) - n + t]].item() for t in range(n))
            want.append(((i, j, item["gold"], len(choice), n), ll))
    got = tasks.evaluate(model, batches)
    ref = tasks.choice_scores(want)
    for metric in tasks.METRICS:
        assert got[metric] == pytest.approx(ref[metric], rel=1e-5)
    lls = [r for x, y, c in batches for r in tasks.batch_scores(*model(x, y), y, c)[3]]
    assert rel_err(torch.tensor([ll for _, ll in lls]), torch.tensor([ll for _, ll in want])) < 1e-5

def test_a_context_ending_in_a_space_is_split_as_the_harness_splits_it(tmp_path):
    # LM-Evaluation-Harness scores ("Am bold to ", "show") exactly as ("Am bold to", " show") (lm-eval's
    # _encode_pair): the context's trailing whitespace starts the continuation, context + continuation is
    # encoded whole, and the continuation is what follows the context's own tokens. In GPT-2's BPE that is
    # the one token " show" (905), where "show" alone is another; acc_norm divides by the continuation's length
    gpt2 = {"tokenizer": "gpt2", "vocab": list(range(50257)), "dataset": "test"}
    spaced = {**META, "vocab": list(CHARS) + [" ", "\n"]}
    for meta, context, choices, first in ((gpt2, "Am bold to ", ["show", "welcome"], [905]),
                                          (gpt2, "Am bold to \n", ["show", "welcome"], None),
                                          (spaced, "abc \n", ["de", "fgh"], [20, 21, 3, 4])):
        tail = context[len(context.rstrip()):]
        a = write_items(tmp_path / "a.jsonl", [{"context": context, "choices": choices, "gold": 1}] * 2)
        b = write_items(tmp_path / "b.jsonl", [{"context": context.rstrip(), "choices": [tail + c for c in choices], "gold": 1}] * 2)
        item = tasks.read_items(a, meta, 32)[0][0]
        assert tasks.read_items(b, meta, 32)[0][0] == item
        whole = [prepare.encode(context + c, meta) for c in choices]
        assert item["context"] == whole[0][:len(item["context"])] == prepare.encode(context.rstrip(), meta)
        assert item["choices"] == [w[len(item["context"]):] for w in whole] and item["chars"] == [len(tail + c) for c in choices]
        assert first is None or item["choices"][0] == first

def test_file_task_is_split_into_disjoint_search_and_test_items(tmp_path):
    items = [{"context": CHARS[i % 20], "choices": ["ab", "cd"], "gold": i % 2} for i in range(11)]
    read, _ = tasks.read_items(write_items(tmp_path / "mc.jsonl", items), META, 32)
    search, test = tasks.split_items(read)
    lines = [[i["where"] for i in part] for part in (search, test)]
    assert (len(search), len(test)) == (6, 5) and not set(lines[0]) & set(lines[1])
    assert sorted(lines[0] + lines[1]) == list(range(1, 12)) and lines[0] != list(range(1, 7))  # shuffled, then halved
    assert [[i["where"] for i in part] for part in tasks.split_items(read)] == lines  # the same split every time
    bom = tmp_path / "bom.jsonl"  # a file saved with a byte-order mark (Windows editors) reads the same
    bom.write_text("\ufeff" + (tmp_path / "mc.jsonl").read_text(), encoding="utf-8")
    assert tasks.read_items(str(bom), META, 32)[0] == read

def test_cloze_items_come_from_the_validation_split_in_disjoint_halves():
    g = torch.Generator().manual_seed(0)
    val = torch.randint(20, (6000,), generator=g)
    val[torch.randint(6000, (300,), generator=g)] = CHARS.index("t")  # "t" plays the newline
    meta = {**META, "vocab": list(CHARS[:-1]) + ["\n"]}
    search, test = tasks.build_cloze(val, meta, 41, 64)
    assert (len(search), len(test)) == (21, 20)
    half, span = len(val) // 2, tasks.CLOZE_SPAN
    for part, lo, hi in ((search, 0, half), (test, half, len(val))):
        for item in part:
            p = item["where"]
            assert lo <= p - tasks.CLOZE_CONTEXT and p + span <= hi  # the passage and its continuation in its half
            assert item["context"] == val[p - tasks.CLOZE_CONTEXT:p].tolist() and item["choices"][item["gold"]] == val[p:p + span].tolist()
            assert len(item["choices"]) == 4 and all(len(c) == span for c in item["choices"]) and item["chars"] == [span] * 4
            assert val[p - 1] != 19 and val[p] != 19  # the cut is inside a line
            for c in item["choices"]:  # distractors from the same half: found there, never the true continuation
                assert c == item["choices"][item["gold"]] or any(val[lo:hi][q:q + span].tolist() == c for q in range(hi - lo - span + 1))
            assert sum(c == item["choices"][item["gold"]] for c in item["choices"]) == 1
    assert len({i["gold"] for i in search}) == 4  # the right answer's place is random
    assert tasks.build_cloze(val, meta, 41, 64) == [search, test]  # fixed seed: the same items every run

def test_tasks_end_to_end(tiny_run, data_dir, tmp_path):
    args, out, _ = tiny_run
    (tmp_path / "mine.txt").write_text(open(os.path.join(data_dir, "shakespeare", "input.txt")).read()[:3000])
    r = dtr.run(dtr.parse_args(args + ["--task", "lm,copy", "--task_text", str(tmp_path / "mine.txt")]))
    assert list(r["tasks"]) == r["tasks_cross_eval"]["rows"] == ["lm", "copy", "mine.txt"]
    lm = r["tasks"]["lm"]  # the lm task is the single-task search, not a second one
    assert (lm["teacher_loss"], lm["trajectory"], lm["m_opt"]) == (r["teacher"]["val_loss"], r["trajectory"], r["m_opt"])
    for i, t in enumerate(r["tasks"].values()):
        assert r["tasks_cross_eval"]["loss"][i][i] == pytest.approx(t["m_opt"]["test_loss"], rel=1e-5)

# ---- target tasks end to end: multiple choice, your own file, names that must not collide ----

def shakespeare_items(data_dir, n=24):
    """A multiple-choice file from tiny Shakespeare: a passage, its next 12 characters among two spans from elsewhere."""
    text = open(os.path.join(data_dir, "shakespeare", "input.txt")).read()[:20000]
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        p, *q = (100 + torch.randint(len(text) - 300, (3,), generator=g)).tolist()
        context = text[p - (90 if i == 0 else 40):p]  # the first is longer than the tiny window (64): cut from the left
        items.append({"context": context, "choices": [text[p:p + 12]] + [text[r:r + 12] for r in q], "gold": 0})
    return items

def test_multiple_choice_tasks_end_to_end(tiny_run, data_dir, tmp_path, capsys):
    # lm, copy, your file and cloze through one interface, each searched by its own metric (--metric
    # auto): one search each, each task's M_best and M_opt saved and scoring what the report says,
    # every M_opt on every task
    args, out, _ = tiny_run
    mine = write_items(tmp_path / "mine.jsonl", shakespeare_items(data_dir))
    cfg = dtr.parse_args(args + ["--task", f"lm,copy,{mine},cloze", "--cloze_items", "60"])
    r = dtr.run(cfg)
    log = capsys.readouterr().out
    names = ["lm", "copy", "mine.jsonl", "cloze"]
    assert list(r["tasks"]) == r["tasks_cross_eval"]["rows"] == names
    assert "task     mine.jsonl: 1 of 24 contexts cut from the left to fit the 64-token window" in log
    assert r["tasks"]["cloze"]["n"] == {"search": 30, "test": 30} and r["tasks"]["mine.jsonl"]["n"] == {"search": 12, "test": 12}
    assert "(30 search / 30 test items)" in log and " ± " in log  # accuracies with their standard error
    batches = tasks.task_batches(cfg, prepare.load_data(cfg)[1], prepare.load_data(cfg)[2], "cpu")
    assert [r["tasks"][n]["metric"] for n in names] == ["loss", "loss", "accuracy", "accuracy"] and r["metric"] == "loss"
    assert "(a column: test lm loss, copy loss, mine.jsonl accuracy, cloze accuracy)" in log
    for i, name in enumerate(names):
        t = r["tasks"][name]
        p, sign = t["metric"], tasks.METRICS[t["metric"]]
        assert sign * t["m_opt"]["val_" + p] <= sign * (1 + sign * cfg.tolerance) * t["teacher_" + p] + 1e-9
        assert r["tasks_cross_eval"][p][i][i] == pytest.approx(t["m_opt"]["test_" + p], rel=1e-6)
        for m in ("m_best", "m_opt"):
            path = os.path.join(out, "gla", *(["tasks", name] if name != "lm" else []), m + ".pt")
            model, ckpt = dtr.load_hybrid(path, "cpu")
            assert ckpt["task"] == name and ckpt["linear_layers"] == t[m]["linear_layers"]
            assert tasks.evaluate(model, batches[name][1])[p] == pytest.approx(t[m]["test_" + p], rel=1e-6)
    # the cross table: a header that names its columns, every "|" in line however long the names
    table = [line[len("tasks    "):] for line in log.splitlines() if line.startswith("tasks    ")][1:]
    assert table[0].split("|")[0].strip() == "M_opt of" and [c.strip() for c in table[0].split("|")[2:]] == names
    assert len({tuple(i for i, ch in enumerate(line) if ch == "|") for line in table}) == 1

def both_spellings(text, folder, n=12):
    """Two files of the same n items from text: contexts (from a line's start) ending in a space, and that
    space moved onto every choice. Each choice is a word; the first is the one that follows the context."""
    g, words = torch.Generator().manual_seed(0), [i + 1 for i, c in enumerate(text[:-20]) if c == " " and i > 60]
    a, b = [], []
    for i in range(n):
        p, *q = (words[j] for j in torch.randint(len(words), (3,), generator=g).tolist())
        choices, start = [text[r:text.index(" ", r)] for r in [p] + q], text.rindex("\n", 0, p - 20) + 1
        a.append({"context": text[start:p], "choices": choices, "gold": 0})
        b.append({"context": text[start:p - 1], "choices": [" " + c for c in choices], "gold": 0})
    return write_items(folder / "a.jsonl", a), write_items(folder / "b.jsonl", b)

def same_search(report):
    """The two spellings' searches, without their timings: equal when the two score alike."""
    return [{k: v for k, v in report["tasks"][name].items() if k != "seconds"} for name in ("a.jsonl", "b.jsonl")]

def test_both_spellings_of_a_context_ending_in_a_space_score_alike(tiny_run, data_dir, tmp_path):
    # through the real command line: on the char teacher, then on a BPE teacher of a small text (2 layers,
    # 2 steps: the tokens are what matter), every score of the two files is the same, acc_norm included
    args, out, _ = tiny_run
    shutil.copytree(out, tmp_path / "char")
    text = open(os.path.join(data_dir, "shakespeare", "input.txt")).read()
    dtr.main(with_out_dir(args, tmp_path / "char") + ["--task", ",".join(both_spellings(text[:20000], tmp_path))])
    report = json.load(open(tmp_path / "char" / "gla" / "report.json"))
    assert same_search(report)[0] == same_search(report)[1] and report["tasks"]["a.jsonl"]["n"]["test"] == 6
    (tmp_path / "small.txt").write_text(text[:40000])
    dtr.main(["--preset", "tiny", "--dataset", str(tmp_path / "small.txt"), "--tokenizer", "gpt2", "--n_layer", "2",
              "--max_iters", "2", "--distill_iters", "2", "--sample_tokens", "0", "--data_dir", str(tmp_path / "d"),
              "--out_dir", str(tmp_path / "bpe"), "--task", ",".join(both_spellings(text[:40000], tmp_path))])
    report = json.load(open(tmp_path / "bpe" / "gla" / "report.json"))
    assert same_search(report)[0] == same_search(report)[1]

@pytest.mark.parametrize("line,says", [
    ('{"context": "to be", "choices": [" or", " not"], "gold": 0', "line 2 is not JSON"),
    ('{"context": "to be", "choices": [" or", " not"]}', "line 2 has no 'gold'"),
    ('[1, 2, 3]', "line 2 is a JSON list, not an object"),
    ('{"context": "to be", "choices": [" or", " not"], "gold": 2}', "line 2: gold 2 is not the index of one of its 2 choices"),
    ('{"context": "to be", "choices": [], "gold": 0}', "line 2 has no choices"),
    ('{"context": "to be", "choices": [" or"], "gold": 0}', "line 2 has 1 choice; give two at least"),
    ('{"context": "to be", "choices": ["", " not"], "gold": 0}', "line 2: choice 0 ('') is 0 tokens"),
    ('{"context": "to be", "choices": [" not", "' + "a" * 65 + '"], "gold": 0}', "is 65 tokens; a choice must be 1 to 64"),
    ('{"context": "caf\u00e9", "choices": [" or", " not"], "gold": 0}', "line 2, its context, contains '\u00e9'"),
    ('{"context": "", "choices": [" or", " not"], "gold": 0}', "line 2 has an empty context;"),
    ('{"context": " \\n", "choices": [" or", " not"], "gold": 0}', "line 2 has an empty context (only whitespace, which goes with the choices)"),
    ('{"context": "to\u2028be", "choices": [" or", " not"], "gold": 0}', "line 2, its context, contains '\\u2028'"),  # one line, raw U+2028
])
def test_a_bad_task_file_is_one_line_naming_the_line(tiny_run, tmp_path, capsys, line, says):
    args, out, _ = tiny_run
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "to be", "choices": [" or", " not"], "gold": 1}\n' + line + "\n", encoding="utf-8")
    before = fingerprint(out)
    err = refused_here(dtr.main, args + ["--task", f"lm,{bad}"], capsys)
    assert says in err and str(bad) in err
    assert fingerprint(out) == before  # refused before the teacher is even read

def test_a_refused_run_leaves_the_run_folder_untouched(tiny_run, data_dir, tmp_path):
    # every file is read and checked before the run folder is claimed: a bad --task file (or text) neither
    # creates the folder nor rewrites a finished one's .lock, its mtime included
    args, out, _ = tiny_run
    bad = write_items(tmp_path / "bad.jsonl", [{"context": "to be", "choices": [" or", " not"], "gold": 0}, ["not an item"]])
    assert "line 2 is a JSON list" in refused(with_out_dir(args, tmp_path / "new") + ["--task", bad])
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe not utf-8")
    assert "as UTF-8 text" in refused(["--preset", "tiny", "--dataset", str(tmp_path / "bin.txt"), "--data_dir",
                                        str(tmp_path / "d"), "--out_dir", str(tmp_path / "new")], "train_teacher.py")
    assert not (tmp_path / "new").exists()
    shutil.copytree(out, tmp_path / "old")
    (tmp_path / "old" / ".lock").write_text("123: the run before")
    files = lambda: {f: (open(f, "rb").read(), os.stat(f).st_mtime_ns)
                     for f in (os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "old") for f in fs)}
    before = files()
    assert "line 2 is a JSON list" in refused(with_out_dir(args, tmp_path / "old") + ["--task", bad])
    assert files() == before and str(tmp_path / "old" / ".lock") in before
    # refused once the work has begun (a teacher of other settings, an --init_from that is no model): the same
    assert "rerun with the settings it was written with" in refused(with_out_dir(args, tmp_path / "old") + ["--lr", "1e-3"])
    assert files() == before
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    refused(with_out_dir(args, tmp_path / "new") + ["--init_from", str(tmp_path / "junk.pt")])
    assert not (tmp_path / "new").exists()

def test_task_names_never_collide(tiny_run, tmp_path):
    # a file named like a built-in task (or like another file's task) would replace that
    # task's search, m_opt.pt and report: refused before any work, through the real command line
    args = with_out_dir(tiny_run[0], tmp_path / "o")
    for name in ("lm", "copy", "cloze"):
        os.makedirs(tmp_path / name)
        (tmp_path / name / name).write_text("to be or not to be\n" * 20)
    (tmp_path / "lm" / "q.jsonl").write_text("")
    (tmp_path / "copy" / "q.jsonl").write_text("")
    assert "--task_text {} would be the task 'lm', the name of the built-in task lm".format(tmp_path / "lm" / "lm") in \
        refused(args + ["--task_text", str(tmp_path / "lm" / "lm")])
    assert "would be the task 'copy', the name of the built-in task copy" in refused(args + ["--task", f"lm,{tmp_path / 'copy' / 'copy'}"])
    assert "'q.jsonl', the name of {}".format(tmp_path / "lm" / "q.jsonl") in \
        refused(args + ["--task", f"{tmp_path / 'lm' / 'q.jsonl'},{tmp_path / 'copy' / 'q.jsonl'}"])
    with pytest.raises(DtrError, match="the name of the built-in task cloze"):
        dtr.parse_args(args + ["--task", f"cloze,{tmp_path / 'cloze' / 'cloze'}"])
    assert not (tmp_path / "o").exists()
