"""
The target tasks (§4) and their metric P: what LM-Evaluation-Harness is to the paper. Greedy
replacement (dtr.py) only needs fixed batches to score, so a target task is just its own batches:
one teacher and one set of distilled students serve every task, and each task's search keeps the
full-attention layers that task needs.

Token tasks are batches (x, y), y = -1 where not scored: lm, copy, your text (--task_text).
Multiple-choice tasks, the paper's kind (ARC, PIQA, ... through LM-Evaluation-Harness), are
batches (x, y, choices) with one row per (item, choice), scored by choice_scores: the built-in
cloze, and your JSON Lines file (--task).
"""
import json
import os

import torch
import torch.nn.functional as F

from plumbing import DtrError, autocast
from prepare import decode, encode
from train_teacher import fixed_batches

TASKS = ("lm", "copy", "cloze")  # the built-in target tasks (section 5); --task also takes your own file
# the cloze task's passage and true continuation, in tokens. The default char teacher's test accuracy
# (200 items, standard error ~3 points): 72.5% with a 16-character continuation, 79.5% with 8,
# 57.0% with 32, 66.5% with 16 after a 112-character passage; the next whole line against three
# other lines is chance (25%): a 1M-parameter character model cannot tell which line comes next.
CLOZE_CONTEXT, CLOZE_SPAN = 48, 16

def task_sources(cfg):
    """{task name: (kind, file)} for lm, cfg.task and cfg.task_text (--task, --task_text), in that order. A file's task is
    named after the file; a name that two different tasks would share is refused, so that no
    task ever replaces another's search, checkpoints or report; so is a window too short for a task."""
    sources = {"lm": ("lm", "")}
    for flag, entry in [("--task", t.strip()) for t in cfg.task.split(",")] + [("--task_text", cfg.task_text)] * bool(cfg.task_text):
        if flag == "--task" and entry in TASKS:
            name, source = entry, (entry, "")
        elif os.path.isfile(entry):
            name, source = os.path.basename(entry), ("choices" if flag == "--task" else "text", os.path.abspath(entry))
        else:
            raise DtrError(f"unknown --task {entry!r} (not a built-in task, nor a file that exists); use a comma-separated "
                           f"list of {', '.join(TASKS)} or paths to your JSON Lines files" if flag == "--task" else
                           f"--task_text {entry} is not a file")
        if (source[1] and name in TASKS) or sources.setdefault(name, source) != source:  # built-in names stay reserved
            taken = f"the built-in task {name}" if name in TASKS else sources[name][1]
            raise DtrError(f"{flag} {entry} would be the task {name!r}, the name of {taken}: tasks are named after "
                           f"their file, and one must not replace another's search and m_opt.pt; rename the file")
    if "cloze" in sources and (cfg.block_size < 2 * CLOZE_SPAN or cfg.cloze_items < 2):
        raise DtrError(f"the cloze task needs --block_size >= {2 * CLOZE_SPAN} (a passage and a {CLOZE_SPAN}-token "
                       f"continuation) and --cloze_items >= 2; have {cfg.block_size} and {cfg.cloze_items}")
    if "copy" in sources and cfg.block_size < 4:
        raise DtrError(f"the copy task shows a passage of block_size // 2 tokens twice; --block_size {cfg.block_size} "
                       f"is too short, use 4 or more")
    return sources

# ---- the metric P ----

METRICS = {"loss": 1, "accuracy": -1, "acc_norm": -1}  # the sign that makes lower better

def task_metric(metric, batches):
    """The metric P of a task's search: --metric, or with auto each task's own: accuracy for a
    multiple-choice task (batches (x, y, choices): the paper's P), next-token loss for the others."""
    return metric if metric != "auto" else "accuracy" if len(batches[0]) == 3 else "loss"

def choice_scores(rows):
    """Multiple-choice metrics as LM-Evaluation-Harness computes them, from one row per choice:
    ((item, choice, gold, chars, tokens), ll), where ll is the choice's log-likelihood given its
    item's context, ll_ij = sum over the choice's tokens t of log p(t | context, earlier tokens):

        accuracy = 1/N sum_i [argmax_j ll_ij == gold_i]                  ("acc")
        acc_norm = 1/N sum_i [argmax_j ll_ij / chars_ij == gold_i]       (chars: the continuation's length in characters)
        loss     = -(sum_i ll_i,gold_i) / (sum_i tokens_i,gold_i)        (per-token loss of the right answers)

    over the N items; ties go to the first choice (numpy's argmax, as in the harness)."""
    items = {}
    for (item, j, gold, chars, tokens), ll in rows:
        items.setdefault(item, []).append((j, gold, chars, tokens, ll))
    acc = acc_norm = ll_gold = tokens_gold = 0
    for choices in items.values():
        choices.sort()
        gold = choices[0][1]
        acc += max(range(len(choices)), key=lambda j: (choices[j][4], -j)) == gold
        acc_norm += max(range(len(choices)), key=lambda j: (choices[j][4] / choices[j][2], -j)) == gold
        ll_gold, tokens_gold = ll_gold + choices[gold][4], tokens_gold + choices[gold][3]
    return {"loss": -ll_gold / tokens_gold, "accuracy": acc / len(items), "acc_norm": acc_norm / len(items), "n": len(items)}

def n_scored(batches):
    """What a task's metric averages over: its items (multiple choice), else its scored targets."""
    if len(batches[0]) == 3:
        return len({c[0] for _, _, choices in batches for c in choices})
    return sum((y != -1).sum().item() for _, y in batches)

def batch_scores(logits, loss, y, choices=None):
    """One batch's share of the metrics: (mean loss, exact predictions, scored targets), and for
    a multiple-choice batch (x, y, choices: section 5) also [(row's choice, its log-likelihood)]."""
    scored = y != -1
    out = (loss.item(), ((logits.argmax(-1) == y) & scored).sum().item(), scored.sum().item())
    if choices is None:
        return out
    logp = -F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=-1, reduction="none")  # (B, T), 0 where y = -1
    return out + (list(zip(choices, logp.sum(1).tolist())),)

def reduce(rows, metric):
    """Loss: the mean of the batches' mean losses. Accuracy (and acc_norm): exact predictions over
    scored targets. Multiple-choice batches: choice_scores, over all the items."""
    if len(rows[0]) == 4:
        return choice_scores([r for row in rows for r in row[3]])[metric]
    if metric == "loss":
        return sum(r[0] for r in rows) / len(rows)
    return sum(r[1] for r in rows) / max(1, sum(r[2] for r in rows))

@torch.no_grad()
def evaluate(model, batches, device="cpu", bf16=False):
    """The task metrics P of a model on fixed batches (§4): {"loss": mean next-token loss over the
    batches, "accuracy" (= "acc_norm"): the share of scored targets (not -1) its argmax predicts
    exactly}; on multiple-choice batches, LM-Evaluation-Harness's (choice_scores)."""
    rows = []
    with autocast(device, bf16):
        for x, y, *choices in batches:
            logits, loss = model(x, y)
            rows.append(batch_scores(logits, loss, y, *choices))
    return {metric: reduce(rows, metric) for metric in METRICS}

# ---- the tasks' batches ----

def copy_batches(data, block_size, batch_size, n_batches, device, test=False):
    """In-context recall: each row is a held-out passage of block_size // 2 tokens shown twice.
    Only the second copy is scored (every other target is -1): from its second token on, each
    token can be read off the first copy, which softmax attention does with induction heads and
    a fixed-size linear-attention state can only approximate."""
    half = block_size // 2
    batches = []
    for p, nxt in fixed_batches(data, half, batch_size, n_batches, device, test=test):  # passages (B, half)
        x = torch.cat([p, p], dim=1)  # (B, 2 half)
        y = torch.full_like(x, -1)
        y[:, half:-1] = nxt[:, :-1]  # p[1:]; the first token of the second copy has no cue yet
        batches.append((x, y))
    return batches

def without_repeat(batches):
    """Copy batches (B, T) cut to their second half's targets after the first half alone: the same
    passages without the repeat, which says what the first copy is worth."""
    half = batches[0][0].size(1) // 2
    return [(x[:, :half], y[:, half:]) for x, y in batches]  # (B, half) each

def read_text(path, flag):
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DtrError(f"cannot read {flag} {path} as UTF-8 text ({e})") from None

def text_batches(path, meta, cfg, device, test=False):
    """The user's own validation text through the teacher's tokenizer, as next-token batches."""
    ids = encode(read_text(path, "--task_text"), meta, f"--task_text {path}")
    if len(ids) < cfg.block_size + 2:
        raise DtrError(f"--task_text {path} has {len(ids)} tokens, fewer than the context "
                       f"({cfg.block_size}) + 2; use a longer text")
    return fixed_batches(torch.tensor(ids), cfg.block_size, cfg.batch_size, cfg.val_batches, device, test=test)

def lm_batches(cfg, val, device, test=False):
    """Next-token prediction on the validation split: the search batches, or with test=True the test ones."""
    return fixed_batches(val, cfg.block_size, cfg.batch_size, cfg.val_batches, device, test=test)

def choice_batches(items, block_size, rows_per_batch, device):
    """Multiple-choice items -> batches (x, y, choices), one row per (item, choice), built as
    LM-Evaluation-Harness builds them: context + choice, cut from the left to the window's
    block_size + 1 tokens (the choice itself always fits: read_items checks); x all but its last
    token, y the choice's tokens where x predicts them and -1 elsewhere, so the row's summed
    log-probability of y is the choice's log-likelihood. Rows are padded on the right, which by
    causality changes nothing before the padding. choices: (item, choice, gold, chars, tokens) per row."""
    rows = []
    for i, item in enumerate(items):
        for j, choice in enumerate(item["choices"]):
            seq = (item["context"] + choice)[-(block_size + 1):]  # subtle: the cut drops the context's start
            y = [-1] * (len(seq) - 1 - len(choice)) + choice  # y[t] = seq[t + 1] where that is the choice
            rows.append((seq[:-1], y, (i, j, item["gold"], item["chars"][j], len(choice))))
    batches = []
    for b in range(0, len(rows), rows_per_batch):
        chunk = rows[b:b + rows_per_batch]
        T = max(len(x) for x, _, _ in chunk)
        x = torch.tensor([x + [0] * (T - len(x)) for x, _, _ in chunk], device=device)  # (B, T)
        y = torch.tensor([y + [-1] * (T - len(y)) for _, y, _ in chunk], device=device)  # (B, T)
        batches.append((x, y, [c for _, _, c in chunk]))
    return batches

ITEM = '{"context": "...", "choices": ["...", "..."], "gold": 0}'

def read_items(path, meta, block_size):
    """Your multiple-choice task: a JSON Lines file, one item a line (blank lines skipped), ITEM
    with gold the index of the right choice, tokenised with the teacher's tokenizer as the harness
    does (below). Every fault is one error naming its line. A context too long for the window is
    cut from the left, as LM-Evaluation-Harness cuts it, and counted.
    Returns ([{"where": line, "context", "choices", "gold", "chars"}], items cut)."""
    items, cut = [], 0
    for n, line in enumerate(read_text(path, "--task").split("\n"), 1):  # (not splitlines: U+2028 may sit inside a string)
        if not line.strip():
            continue
        where = f"--task {path} line {n}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DtrError(f"{where} is not JSON ({e.msg}); each line is one item: {ITEM}") from None
        if not isinstance(item, dict):
            raise DtrError(f"{where} is a JSON {type(item).__name__}, not an object; each line is one item: {ITEM}")
        missing = [k for k in ("context", "choices", "gold") if k not in item]
        if missing:
            raise DtrError(f"{where} has no {', '.join(repr(k) for k in missing)}; each line is one item: {ITEM}")
        context, choices, gold = item["context"], item["choices"], item["gold"]
        if not isinstance(context, str) or not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise DtrError(f"{where}: the context must be a string and the choices a list of strings: {ITEM}")
        if len(choices) < 2:  # one choice is always right: an accuracy of 1 that measures nothing
            raise DtrError(f"{where} has {'1 choice' if choices else 'no choices'}; give two at least, the right one and another")
        if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
            raise DtrError(f"{where}: gold {gold!r} is not the index of one of its {len(choices)} choices (0 to {len(choices) - 1})")
        # the harness's split (lm-eval's _encode_pair): the context's trailing whitespace starts each continuation,
        # context + continuation is encoded whole, and the continuation's tokens are those after the context's own
        # (so "Am bold to " + "show" scores as "Am bold to" + " show": in GPT-2's BPE " show" is one token)
        tail, context = context[len(context.rstrip()):], context.rstrip()
        context_ids = encode(context, meta, f"{where}, its context,")
        if not context_ids:
            raise DtrError(f"{where} has an empty context{' (only whitespace, which goes with the choices)' if tail else ''}; "
                           f"the first token of a choice needs one before it")
        ids = [encode(context + tail + c, meta, f"{where}, choice {j},")[len(context_ids):] for j, c in enumerate(choices)]
        for j, c in enumerate(ids):
            if not 0 < len(c) <= block_size:
                merged = " (after the context: its tokens merge with the context's last; start it with a space)" \
                    if choices[j] and not c else ""
                raise DtrError(f"{where}: choice {j} ({choices[j][:40]!r}) is {len(c)} tokens{merged}; a choice must be "
                               f"1 to {block_size} (the window) tokens")
        cut += len(context_ids) + max(len(c) for c in ids) > block_size + 1
        items.append({"where": n, "context": context_ids, "choices": ids, "gold": gold, "chars": [len(tail + c) for c in choices]})
    if len(items) < 2:
        raise DtrError(f"--task {path} has {len(items)} item(s); the search and the test need one each at least")
    return items, cut

def split_items(items):
    """Algorithm 1 chooses on search items and reports on test items: a fixed shuffle (seed 0,
    the same split in every run), the first half (rounded up) to search, the rest to test."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(0)).tolist()
    half = (len(items) + 1) // 2
    return [items[i] for i in sorted(order[:half])], [items[i] for i in sorted(order[half:])]

def build_cloze(val, meta, n_items, block_size):
    """The built-in multiple-choice task, HellaSwag-style, from the validation split only (never
    text the teacher trained on): a passage of CLOZE_CONTEXT tokens cut inside a line, its true
    next CLOZE_SPAN tokens and three spans of the same length from elsewhere (each also starting
    inside a line), in a random order; seed 0, the same items in every run. Search items come from
    the split's first half, test items from its second: disjoint, distractors included."""
    try:
        newline = encode("\n", meta)[0]
    except DtrError:
        newline = -1  # a vocabulary without one: every cut is inside a "line"
    context, span, gen = min(CLOZE_CONTEXT, block_size + 1 - CLOZE_SPAN), CLOZE_SPAN, torch.Generator().manual_seed(0)
    halves = []
    for offset, part in ((0, val[:len(val) // 2]), (len(val) // 2, val[len(val) // 2:])):
        inside = (part[:-1] != newline) & (part[1:] != newline)  # inside[p - 1]: the cut before token p splits a line
        starts = torch.nonzero(inside[context - 1:len(part) - span]).flatten() + context  # (n,) valid cuts
        starts = starts[torch.randperm(len(starts), generator=gen)].tolist()
        items, want = [], (n_items + 1) // 2 if offset == 0 else n_items // 2
        while len(items) < want and len(starts) >= 4:
            p, *others = starts[-4:]
            del starts[-4:]
            choices = [part[q:q + span].tolist() for q in [p] + others]
            if any(abs(q - p) < span or c == choices[0] for q, c in zip(others, choices[1:])):
                continue  # a distractor overlapping, or equal to, the true continuation
            gold = int(torch.randint(4, (1,), generator=gen))
            choices.insert(gold, choices.pop(0))
            items.append({"where": offset + p, "context": part[p - context:p].tolist(), "choices": choices,
                          "gold": gold, "chars": [len(decode(c, meta)) for c in choices]})
        if len(items) < want:
            raise DtrError(f"the validation split has room for {len(items)} of the {want} cloze items each half "
                           f"needs; lower --cloze_items or use a longer text")
        halves.append(items)
    return halves

def task_batches(cfg, val, meta, device):
    """{task name: (search batches, test batches)} for every task of the run (task_sources:
    lm first), built (and checked) before training."""
    tasks = {}
    for name, (kind, path) in task_sources(cfg).items():
        if kind in ("lm", "copy", "text"):
            make = {"lm": lambda test: lm_batches(cfg, val, device, test),
                    "copy": lambda test: copy_batches(val, cfg.block_size, cfg.batch_size, cfg.val_batches, device, test),
                    "text": lambda test: text_batches(path, meta, cfg, device, test)}[kind]
            tasks[name] = (make(False), make(True))
            continue
        if kind == "cloze":
            search, test = build_cloze(val, meta, cfg.cloze_items, cfg.block_size)
        else:
            items, cut = read_items(path, meta, cfg.block_size)
            search, test = split_items(items)
            if cut:
                print(f"task     {name}: {cut} of {len(items)} contexts cut from the left to fit the "
                      f"{cfg.block_size}-token window (as LM-Evaluation-Harness does)")
        tasks[name] = tuple(choice_batches(s, cfg.block_size, 4 * cfg.batch_size, device) for s in (search, test))
        print(f"task     {name}: {len(search)} search / {len(test)} test items of multiple choice")
    return tasks
