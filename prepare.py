"""
The data, as nanoGPT's prepare.py makes it: a text (tiny Shakespeare, downloaded once, or your
file) -> token ids in a compact vocabulary (the characters or GPT-2 tokens that occur, or an
imported teacher's own), split 90/10 into train and val, and cached in data_dir as .bin files
with a meta.json. train_teacher.py cuts these into batches.
"""
import hashlib
import json
import os
import urllib.request

import numpy as np
import torch

from plumbing import DtrError, atomic_save, load_file
from pretrained import auto_tokenizer, init_name, teacher_vocab

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"

BUILTIN = {"shakespeare": "gpt2", "shakespeare_char": "char"}  # dataset -> tokenizer; both read one copy of the text
def data_name(cfg):
    """shakespeare, shakespeare_char, <your file's name>-<tokenizer>, or with --init_from <text>-from-<teacher>:
    names the data cache and the run folder."""
    text = cfg.dataset if cfg.dataset in BUILTIN else os.path.splitext(os.path.basename(cfg.dataset))[0]
    if cfg.init_from:  # the teacher's own tokenizer: <text>-from-<teacher>
        return f"{text}-from-{init_name(cfg.init_from)}"
    return text if cfg.dataset in BUILTIN else f"{text}-{cfg.tokenizer}"

def gpt2_encoding():
    import tiktoken  # only needed for BPE datasets
    try:
        return tiktoken.get_encoding("r50k_base")  # the same 50,257-token vocabulary as "gpt2"
    except Exception as e:
        raise DtrError(f"could not load GPT-2's BPE through tiktoken ({type(e).__name__}); connect to the internet "
                       f"once, or set TIKTOKEN_CACHE_DIR to a folder that holds its cache") from None

def tokenize(text, tokenizer, sha256=None):
    """text -> characters, or the ids of GPT-2's BPE or of an imported model's own tokenizer (its name; sha256:
    the fingerprint it must still have)."""
    if tokenizer == "char":
        return list(text)
    if tokenizer == "gpt2":
        return gpt2_encoding().encode_ordinary(text)
    return auto_tokenizer(tokenizer, sha256).encode(text, add_special_tokens=False)

def tokenizer_sha256(tokenizer, vocab):
    """What an imported teacher's ids mean, as a fingerprint: its own tokenizer's, or its vocabulary's (a nanoGPT
    meta.pkl's characters), so that a folder saved again in place is never read with the old ids."""
    if tokenizer not in ("char", "gpt2"):
        return auto_tokenizer(tokenizer, fingerprint=True)
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()

def encode(text, meta, what="the text"):
    """Text -> ids in our compact vocabulary; a character (or GPT-2 token) it lacks is a DtrError."""
    pieces = tokenize(text, meta["tokenizer"], meta.get("tokenizer_sha256"))
    ids = {t: i for i, t in enumerate(meta["vocab"])}  # character or GPT-2 id -> compact id
    missing = next((p for p in pieces if p not in ids), None)
    if missing is not None:
        shown = repr(missing if meta["tokenizer"] == "char" else gpt2_encoding().decode([missing]))
        raise DtrError(f"{what} contains {shown}, which is not in the teacher's {meta['tokenizer']} vocabulary "
                       f"({meta['dataset']}); remove it, or train a teacher on data that has it")
    return [ids[p] for p in pieces]

def decode(ids, meta):
    tokens = [meta["vocab"][i] for i in ids if i < len(meta["vocab"])]  # nanoGPT pads GPT-2's 50,257 ids to 50,304 rows
    if meta["tokenizer"] in ("char", "gpt2"):
        return "".join(tokens) if meta["tokenizer"] == "char" else gpt2_encoding().decode(tokens)
    return auto_tokenizer(meta["tokenizer"], meta.get("tokenizer_sha256")).decode(tokens)

def download(url, path):
    print(f"downloading {url} -> {path}")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with urllib.request.urlopen(url, timeout=30) as r:
            data = r.read()
        tmp = f"{path}.{os.getpid()}.tmp"  # under torchrun every process downloads: none renames another's file
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise DtrError(f"could not download tiny Shakespeare to {path} ({e}); put the file from {url} "
                       f"there by hand and rerun") from None

def raw_ids(text, tokenizer, size=1 << 20):
    """The text's tokens as raw ids (Unicode code points, or GPT-2's token ids): a list of uint32 arrays,
    one per `size` characters or so, 4 bytes a token however long the text (a list of Python strings or
    ints takes 20 times the text or more). subtle: a BPE piece ends only where a
    non-space is followed by a newline, where GPT-2's pre-tokenizer splits anyway, so the tokens are
    those of the whole text encoded at once."""
    parts, start = [np.zeros(0, dtype=np.uint32)], 0  # (an empty text has no tokens)
    while start < len(text):
        end = min(len(text), start + size)
        if tokenizer not in ("char", "gpt2"):  # an imported model's own tokenizer: the whole text at once
            end = len(text)
        while tokenizer == "gpt2" and end < len(text) and not (text[end] == "\n" and not text[end - 1].isspace()):
            end = text.find("\n", end + 1) if text.find("\n", end + 1) >= 0 else len(text)
        part = text[start:end]
        parts.append(np.frombuffer(part.encode("utf-32-le"), dtype=np.uint32) if tokenizer == "char" else
                     np.array(tokenize(part, tokenizer), dtype=np.uint32))
        start = end
    return parts

def check_split(data, block_size, split):
    """Every entry point (training, distillation, the searches) needs one window of context + 1 tokens."""
    if len(data) < block_size + 2:
        raise DtrError(f"the {split} split has {len(data)} tokens, fewer than the context "
                       f"({block_size}) + 2; use a longer text or a smaller --block_size")

def read_cache(folder, src, sha, tokenizer, vocab, tokenizer_sha):
    """The encoded splits cached in folder, if meta.json says they were made from this text (sha) with
    this tokenizer (an imported one's fingerprint too) and vocabulary and the lengths match; else None (no
    cache, a broken one or another tokenizer's: encode again)."""
    try:
        meta = load_file(os.path.join(folder, "meta.json"), "", ("source_sha256", "tokenizer", "n_train", "n_val"))
        dtype = np.uint16 if len(meta.get("vocab", [])) <= 1 << 16 else np.uint32
        splits = [np.fromfile(os.path.join(folder, s + ".bin"), dtype=dtype) for s in ("train", "val")]
    except (DtrError, OSError):
        return None
    if meta["source_sha256"] == sha and meta["tokenizer"] == tokenizer and vocab in (None, meta.get("vocab")) and \
            meta.get("tokenizer_sha256") == tokenizer_sha and [len(s) for s in splits] == [meta["n_train"], meta["n_val"]]:
        return (*(torch.from_numpy(s.astype(np.int32)) for s in splits), meta)
    if meta["source_sha256"] != sha and meta.get("source", os.path.abspath(src)) != os.path.abspath(src):
        print(f"data     {folder} holds {meta['source']}, another text of the same name; encoding {src} in its place")
    if meta.get("tokenizer_sha256") not in (None, tokenizer_sha) and meta["tokenizer"] == tokenizer:
        print(f"data     {folder} was encoded with another version of the teacher's tokenizer ({tokenizer}); encoding again")
    return None

def encode_splits(cfg, text, src, sha, tokenizer, vocab, tokenizer_sha):
    """Encode the text's two splits into compact ids (the rows of `vocab`, or of the ids that occur) and
    write the cache: the splits first, meta.json last (it marks the cache complete)."""
    n = int(0.9 * len(text))
    splits = [raw_ids(part, tokenizer) for part in (text[:n], text[n:])]  # each split on its own
    size = 1 + max(int(p.max()) if len(p) else 0 for parts in splits for p in parts)
    raw = np.flatnonzero(sum(np.bincount(p, minlength=size) for parts in splits for p in parts))  # the ids that occur
    if vocab is None:  # only the ids that occur: 11,706 rows for Shakespeare in GPT-2's BPE
        vocab = [chr(c) for c in raw] if tokenizer == "char" else raw.tolist()
    known = [ord(t) if tokenizer == "char" else t for t in vocab]
    row = np.full(max([size] + [k + 1 for k in known]), -1, dtype=np.int32)  # raw id -> its row in vocab
    row[known] = np.arange(len(vocab))
    if len(missing := raw[row[raw] < 0]):  # (GPT-2's BPE lacks nothing)
        shown = [chr(c) if tokenizer == "char" else int(c) for c in missing]
        raise DtrError(f"{src} contains {shown[0]!r}{f' and {len(shown) - 1} more' if len(shown) > 1 else ''}, "
                       f"which the vocabulary of {cfg.init_from} ({cfg.meta}) lacks; remove it, or use text like "
                       f"the text that model was trained on")
    dtype = np.uint16 if len(vocab) <= 1 << 16 else np.uint32  # Llama 3's and Qwen2's vocabularies need 32 bits
    train, val = (np.concatenate([np.take(row.astype(dtype), p) for p in parts]) for parts in splits)
    folder = os.path.join(cfg.data_dir, data_name(cfg))
    meta = {"dataset": data_name(cfg), "tokenizer": tokenizer, "vocab": vocab, "source": os.path.abspath(src),
            "source_sha256": sha, "tokenizer_sha256": tokenizer_sha, "n_train": len(train), "n_val": len(val)}
    for split, arr in (("train", train), ("val", val)):
        atomic_save(arr, os.path.join(folder, split + ".bin"))  # rank 0 only: the others encoded the same tokens
    atomic_save(meta, os.path.join(folder, "meta.json"))  # written last: it marks the cache complete
    return torch.from_numpy(train.astype(np.int32)), torch.from_numpy(val.astype(np.int32)), meta

def load_data(cfg):
    """Returns (train, val, meta): int32 token tensors (windows() makes them int64) and the tokenizer's meta. The split is
    nanoGPT's: first 90% of the characters train, last 10% validate. Encoded splits are cached.
    The vocabulary is what occurs in the text, or with --init_from the imported teacher's. Each
    split must hold one window (check_split)."""
    if cfg.dataset in BUILTIN:
        src, tokenizer = os.path.join(cfg.data_dir, "shakespeare", "input.txt"), BUILTIN[cfg.dataset]
        if not os.path.exists(src):
            download(SHAKESPEARE_URL, src)
    elif os.path.isfile(cfg.dataset):
        src, tokenizer = cfg.dataset, cfg.tokenizer
    else:
        raise DtrError(f"--dataset {cfg.dataset!r} is neither a built-in dataset "
                       f"({', '.join(BUILTIN)}) nor a readable text file")
    try:
        with open(src, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DtrError(f"cannot read {src} as UTF-8 text ({e}); pass a readable UTF-8 file") from None
    tokenizer, vocab = (cfg.tokenizer, teacher_vocab(cfg)) if cfg.init_from else (tokenizer, None)
    if tokenizer == "auto":  # the imported model's own, by a name that --sample finds again from any folder
        tokenizer = os.path.abspath(cfg.init_from) if os.path.isdir(cfg.init_from) else cfg.init_from
    folder = os.path.join(cfg.data_dir, data_name(cfg))
    sha = hashlib.sha256(text.encode()).hexdigest()
    tokenizer_sha = tokenizer_sha256(tokenizer, vocab) if cfg.init_from else None  # (made here: sha says it all)
    cached = read_cache(folder, src, sha, tokenizer, vocab, tokenizer_sha)
    if cached:
        train, val, meta = cached
    else:
        train, val, meta = encode_splits(cfg, text, src, sha, tokenizer, vocab, tokenizer_sha)
    check_split(train, cfg.block_size, "training")
    check_split(val, cfg.block_size, "validation")
    return train, val, meta
