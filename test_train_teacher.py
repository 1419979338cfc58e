"""
Tests of the teacher (train_teacher.py) and the plumbing (plumbing.py): python -m pytest -q test_train_teacher.py

What is where: the copying rows it can train on -> data (the splits, the cache, BPE) -> a teacher
you already have (--init_from a nanoGPT checkpoint or GPT-2) -> the families (Llama, Qwen2, Mistral
and GPT-2's switches: transformers' logits, refusals, a Llama folder end to end) -> an import is the
model or is refused by name (weights missing, extra, misshapen or under a wrapper's prefix, settings we
do not implement) -> a reused import is the same content (a folder or ckpt.pt saved again in place) ->
--arch llama -> torchrun training one step like one process -> no silently wrong result (window starts on huge
splits, failed writes, a busy folder, changed settings, older files, resume states, shared checks).
CPU only; the helpers that run the real command line live in conftest.py.
"""
import importlib.util
import inspect
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import dtr
import prepare
import pretrained
import train_teacher
from conftest import (
    HERE,
    SHARED,
    launch,
    refused,
    refused_here,
    rel_err,
    torchrun,
    weights,
    with_out_dir,
)
from plumbing import DtrError, load_file


def test_teacher_copy_rows_are_a_sequence_shown_twice():
    # training rows with their first half repeated must still be (input, next token) pairs of one
    # sequence, a b c d e a b c d e: y is x shifted by one, continuing with the window's next token
    x = torch.arange(22).view(2, 11)
    x2, y2 = train_teacher.repeat_first_half(x, x + 1, 1)
    assert x2[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5] and torch.equal(y2[0, :-1], x2[0, 1:])
    assert y2[0, -1] == 6 and torch.equal(x2[1], x[1]) and torch.equal(y2[1], x[1] + 1)

# ---- data ----

def test_char_data_facts(data_dir):
    train, val, meta = prepare.load_data(dtr.Config(dataset="shakespeare_char", data_dir=data_dir))
    assert (len(meta["vocab"]), len(train), len(val)) == (65, 1_003_854, 111_540)
    assert prepare.decode(val[:200].tolist(), meta) == open(os.path.join(data_dir, "shakespeare", "input.txt")).read()[1_003_854:1_004_054]

def test_bpe_data_facts(data_dir):
    cfg = dtr.Config(dataset="shakespeare", data_dir=data_dir)
    train, val, meta = prepare.load_data(cfg)
    assert (len(meta["vocab"]), len(train), len(val)) == (11_706, 301_966, 36_059)
    text = open(os.path.join(data_dir, "shakespeare", "input.txt")).read()
    assert prepare.decode(train.tolist(), meta) == text[:1_003_854]
    assert torch.equal(prepare.load_data(cfg)[0], train)  # the cached splits give the same tokens
    with open(os.path.join(data_dir, "shakespeare", "train.bin"), "r+b") as f:
        f.truncate(1000)  # a cut-off cache is encoded again, not read short
    assert torch.equal(prepare.load_data(cfg)[0], train)

def test_bpe_split_inside_a_word(tmp_path):
    # the 90% cut falls inside a word: each split is encoded on its own, and the vocabulary is
    # what occurs in them, so every id has a row and the splits decode back to the text
    text = "A" * 20 + open(os.path.join(SHARED, "data", "shakespeare", "input.txt")).read()[:20_000] \
        if os.path.isdir(SHARED) else "A" * 20 + "the quick brown fox jumps over the lazy dog " * 500
    (tmp_path / "mine.txt").write_text(text)
    cfg = dtr.Config(dataset=str(tmp_path / "mine.txt"), tokenizer="gpt2", data_dir=str(tmp_path / "data"))
    train, val, meta = prepare.load_data(cfg)
    n = int(0.9 * len(text))
    assert prepare.decode(train.tolist(), meta) == text[:n] and prepare.decode(val.tolist(), meta) == text[n:]
    assert max(train.max(), val.max()) < len(meta["vocab"])

# ---- a teacher you already have: --init_from a nanoGPT checkpoint or GPT-2 ----

VOCAB = "hgfedcba \n"  # not in sorted order: the ids must be meta.pkl's, not remapped

def write_nanogpt_checkpoint(root):
    """What nanoGPT's train.py leaves: <root>/out/ckpt.pt, saved from a torch.compile'd model (every key
    under _orig_mod.) with bias=False and an AdamW state, and <root>/data/<dataset>/meta.pkl.
    Returns the model whose weights it holds."""
    torch.manual_seed(0)
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False, vocab_size=len(VOCAB), dropout=0.0)
    model = train_teacher.GPT(train_teacher.GPTConfig(**args))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[1].backward()
    opt.step()
    os.makedirs(root / "out")
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()}, "optimizer": opt.state_dict(),
                "model_args": args, "iter_num": 500, "best_val_loss": torch.tensor(2.25),
                "config": {"dataset": "mine", "batch_size": 12, "compile": True, "learning_rate": 1e-3}}, root / "out" / "ckpt.pt")
    os.makedirs(root / "data" / "mine")
    with open(root / "data" / "mine" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(VOCAB), "itos": dict(enumerate(VOCAB)), "stoi": {c: i for i, c in enumerate(VOCAB)}}, f)
    return model.eval()

def test_nanogpt_checkpoint_is_the_same_model(tmp_path):
    want = write_nanogpt_checkpoint(tmp_path)
    got, info = train_teacher.import_model(str(tmp_path / "out" / "ckpt.pt"))
    assert not any(k.endswith(".bias") for k in got.state_dict()) and info == {"iter_num": 500, "best_val_loss": 2.25, "dataset": "mine"}
    idx = torch.randint(len(VOCAB), (2, 32))
    assert rel_err(got(idx)[0], want(idx)[0]) < 1e-6  # the same ops on the same weights
    # its size, context and tokenizer are found from the checkpoint and meta.pkl where nanoGPT keeps them
    (tmp_path / "mine.txt").write_text("x")
    cfg = dtr.parse_args(["--init_from", str(tmp_path / "out" / "ckpt.pt"), "--dataset", str(tmp_path / "mine.txt")])
    assert (cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.tokenizer) == (2, 16, 32, "char")
    assert cfg.meta == str(tmp_path / "data" / "mine" / "meta.pkl") and cfg.out_dir == os.path.join("out", "mine-from-out-cpu")

def test_nanogpt_checkpoint_converts_end_to_end(tmp_path):
    want = write_nanogpt_checkpoint(tmp_path)
    g = torch.Generator().manual_seed(0)
    text = "".join(VOCAB[i] for i in torch.randint(len(VOCAB), (6000,), generator=g))
    (tmp_path / "mine.txt").write_text(text)
    ckpt = str(tmp_path / "out" / "ckpt.pt")
    args = ["--init_from", ckpt, "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--distill_iters", "5",
            "--sample_tokens", "20", "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o")]
    report = dtr.run(dtr.parse_args(args))
    # the teacher's val loss is nanoGPT's model on the text in meta.pkl's ids
    val = torch.tensor([VOCAB.index(c) for c in text[int(0.9 * len(text)):]])
    assert report["teacher"]["init_from"] == ckpt
    assert report["teacher"]["val_loss"] == pytest.approx(train_teacher.val_loss(want, train_teacher.fixed_batches(val, 32, 8, 2, "cpu")), rel=1e-5)
    assert len(report["trajectory"]) == 2
    sampled = launch([sys.executable, "dtr.py", "--sample", str(tmp_path / "o" / "gla" / "m_opt.pt"), "--sample_tokens", "50"])
    assert set(sampled.splitlines()[-1]) <= set(VOCAB)  # the same tokenizer comes back with M_opt
    # a rerun reuses the imported teacher.pt, unless the checkpoint has changed since (trained on)
    saved = torch.load(ckpt, weights_only=True)
    saved["iter_num"] = 600
    torch.save(saved, ckpt)
    with pytest.raises(DtrError, match="weights or config have changed since"):
        dtr.run(dtr.parse_args(args))

def test_gpt2_from_a_save_pretrained_folder(tmp_path):
    transformers = pytest.importorskip("transformers", reason="--init_from gpt2 needs Hugging Face transformers (pip install transformers)")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257)).eval()
    for block in hf.transformer.h:  # MLP inputs of order 1, where GPT-2's tanh GELU and the exact one differ (by 2e-4 here)
        block.mlp.c_fc.weight.data.mul_(15)
        block.mlp.c_proj.weight.data.mul_(10)
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    model, _ = train_teacher.import_model(str(tmp_path / "gpt2-tiny"))
    idx = torch.randint(50257, (2, 64))
    with torch.no_grad():  # GPT-2's Conv1D weights transposed, its tanh GELU: transformers' own logits
        assert rel_err(model(idx)[0], hf(idx).logits) < 1e-5
    (tmp_path / "mine.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    args = ["--init_from", str(tmp_path / "gpt2-tiny"), "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--block_size", "32",
            "--distill_iters", "3", "--sample_tokens", "10", "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o")]
    cfg = dtr.parse_args(args)
    train, _, meta = prepare.load_data(cfg)
    assert meta["tokenizer"] == "gpt2" and train[:4].tolist() == prepare.gpt2_encoding().encode("the quick brown fox")  # GPT-2's ids as they are
    assert dtr.run(cfg)["teacher"]["init_from"] == str(tmp_path / "gpt2-tiny")

def test_bad_teachers_are_refused(tmp_path, capsys):
    write_nanogpt_checkpoint(tmp_path)
    ckpt, text = str(tmp_path / "out" / "ckpt.pt"), tmp_path / "mine.txt"
    text.write_text("abc " * 100)
    base = ["--dataset", str(text), "--preset", "tiny", "--data_dir", str(tmp_path / "d"), "--out_dir", str(tmp_path / "o")]
    assert "cannot read" in refused(base + ["--init_from", os.path.join(HERE, "README.md")])  # as a script; the rest in-process
    for i, other in enumerate([{"state_dict": {}}, torch.zeros(2)]):  # a dict without nanoGPT's keys, not a dict
        torch.save(other, tmp_path / f"other{i}.pt")
        assert "is not a nanoGPT checkpoint" in refused_here(dtr.main, base + ["--init_from", str(tmp_path / f"other{i}.pt")], capsys)
    assert "neither a file nor a folder" in refused_here(dtr.main, base + ["--init_from", "gpt3"], capsys)
    with open(tmp_path / "short.pkl", "wb") as f:
        pickle.dump({"vocab_size": 9, "itos": dict(enumerate(VOCAB[:9]))}, f)
    assert "has a vocabulary of 10 but" in refused_here(dtr.main, base + ["--init_from", ckpt, "--meta", str(tmp_path / "short.pkl")], capsys)
    os.remove(tmp_path / "data" / "mine" / "meta.pkl")  # no meta.pkl, and too few rows for GPT-2's BPE
    assert "pass --meta path/to/meta.pkl" in refused_here(dtr.main, base + ["--init_from", ckpt], capsys)
    # without transformers, and offline: what to do
    (tmp_path / "fake" / "transformers").mkdir(parents=True)
    (tmp_path / "fake" / "transformers" / "__init__.py").write_text("raise ImportError('not installed')")
    assert "pip install transformers" in refused(base + ["--init_from", "gpt2"], env={"PYTHONPATH": str(tmp_path / "fake")})
    if importlib.util.find_spec("transformers"):
        assert "download it once while online" in refused(base + ["--init_from", "gpt2"], env={"HF_HUB_OFFLINE": "1"})

def test_text_the_teacher_cannot_read_is_refused(tmp_path):
    write_nanogpt_checkpoint(tmp_path)
    (tmp_path / "mine.txt").write_text("abc zebra " * 100)
    cfg = dtr.parse_args(["--init_from", str(tmp_path / "out" / "ckpt.pt"), "--dataset", str(tmp_path / "mine.txt"),
                          "--data_dir", str(tmp_path / "d")])
    with pytest.raises(DtrError, match="contains 'r' and 1 more, which the vocabulary of"):
        prepare.load_data(cfg)

# ---- the families: Llama, Qwen2, Mistral and GPT-2's switches, through transformers ----
# Tiny random models saved by save_pretrained, with a byte-level BPE trained here (no downloads). Weights
# are drawn wider than transformers' init (norm weights and biases far from 1 and 0), so that a switch
# read wrongly moves the logits by far more than rounding (fp32 rounding gives ~1e-7 relative).

def hf_folder(path, kind, vocab_size=320, seed=0, tokens=300, **switches):
    """A random transformers model of family `kind` (weights drawn from `seed`) saved at `path` with our tiny
    tokenizer (`tokens` of them); returns the model."""
    transformers = pytest.importorskip("transformers", reason="the families are imported through Hugging Face transformers")
    size = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64) if kind == "gpt2" else \
        dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=32, intermediate_size=48, max_position_embeddings=64)
    config = transformers.AutoConfig.for_model(kind, vocab_size=vocab_size, **{**size, **switches})
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(1.0 if p.dim() == 1 else 0.0, 0.3)
    hf.tie_weights()  # (a no-op when untied)
    hf.save_pretrained(path)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator([SAMPLE_TEXT], trainers.BpeTrainer(vocab_size=tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                                show_progress=False))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return hf

SAMPLE_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40

LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16)  # wavelengths of 6, 168, ... tokens: all three regimes of the ramp

@pytest.mark.parametrize("kind,switches", [
    pytest.param("llama", dict(tie_word_embeddings=False), id="llama-gqa-untied"),
    pytest.param("llama", dict(num_key_value_heads=1, rope_parameters=LLAMA3_ROPE), id="llama3-rope-scaling"),
    pytest.param("qwen2", dict(tie_word_embeddings=True), id="qwen2-qkv-bias-tied"),
    pytest.param("mistral", dict(sliding_window=64, head_dim=8), id="mistral"),
    pytest.param("gpt2", dict(tie_word_embeddings=False), id="gpt2-untied"),
    pytest.param("gpt2", dict(scale_attn_weights=False, layer_norm_epsilon=1e-2, n_inner=48), id="gpt2-unscaled-eps-n_inner"),
])
def test_our_gpt_computes_the_families_logits(tmp_path, kind, switches):
    hf = hf_folder(tmp_path / kind, kind, **switches)
    model, info = train_teacher.import_model(str(tmp_path / kind))
    idx = torch.randint(320, (2, 64))
    with torch.no_grad():
        assert rel_err(model(idx)[0], hf(idx).logits) < 1e-5 and info["model_type"] == kind
        if kind != "gpt2":  # one query head per key/value head, as our GPT's switch says
            assert model.transformer.h[0].attn.n_kv_head == hf.config.num_key_value_heads

def test_an_import_that_is_not_the_model_is_refused(tmp_path, capsys):
    hf = hf_folder(tmp_path / "llama", "llama")
    model, _ = train_teacher.import_model(str(tmp_path / "llama"))
    assert "teacher  import checked: logits match transformers' (max abs diff" in capsys.readouterr().out
    model.transformer.h[1].attn.rope = (5e5, None)  # a switch read wrongly: another rope theta
    with pytest.raises(DtrError, match="logits differ from transformers'"):
        pretrained.check_logits(model, hf, "llama")

def test_gpt2_untied_and_unscaled_import_exactly_through_the_command_line(tmp_path):
    # an earlier version converted both silently (exit code 0), with logits off by up to 40 and 0.78
    (tmp_path / "mine.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    for name, switch in (("untied", dict(tie_word_embeddings=False)), ("unscaled", dict(scale_attn_weights=False))):
        hf = hf_folder(tmp_path / name, "gpt2", vocab_size=50257, **switch)
        out = launch([sys.executable, "train_teacher.py", "--init_from", str(tmp_path / name), "--dataset", str(tmp_path / "mine.txt"),
                      "--preset", "tiny", "--data_dir", str(tmp_path / "d"), "--out_dir", str(tmp_path / name / "o")])
        assert "teacher  import checked: logits match transformers'" in out
        model, _ = train_teacher.load_model(str(tmp_path / name / "o" / "teacher.pt"), "cpu", "")
        idx = torch.randint(50257, (2, 64))
        with torch.no_grad():
            assert rel_err(model(idx)[0], hf(idx).logits) < 1e-5

def test_a_llama_folder_converts_end_to_end(tmp_path, capsys):
    hf_folder(tmp_path / "llama", "llama", tie_word_embeddings=False)
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT * 3)
    args = ["--init_from", str(tmp_path / "llama"), "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--block_size", "32",
            "--distill_iters", "3", "--sample_tokens", "10", "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o")]
    cfg = dtr.parse_args(args)
    train, _, meta = prepare.load_data(cfg)
    tok = pretrained.auto_tokenizer(str(tmp_path / "llama"))
    assert cfg.tokenizer == "auto" and train[:30].tolist() == tok.encode(SAMPLE_TEXT, add_special_tokens=False)[:30]  # its own ids
    report = dtr.run(cfg)
    assert "teacher  import checked" in capsys.readouterr().out
    types = report["m_opt"]["layer_types"]
    assert types == ["linear_attention" if i in report["m_opt"]["linear_layers"] else "full_attention" for i in range(2)]
    assert torch.load(tmp_path / "o" / "gla" / "m_opt.pt", weights_only=False)["layer_types"] == types
    sampled = launch([sys.executable, "dtr.py", "--sample", str(tmp_path / "o" / "gla" / "m_opt.pt"), "--sample_tokens", "20"])
    assert "linear layers" in sampled and "Traceback" not in sampled

HUB = dict(  # config.json as the hub serves them (the settings that matter here), older transformers' keys included
    gpt2=dict(activation_function="gelu_new", architectures=["GPT2LMHeadModel"], attn_pdrop=0.1, bos_token_id=50256, embd_pdrop=0.1,
              eos_token_id=50256, initializer_range=0.02, layer_norm_epsilon=1e-05, model_type="gpt2", n_ctx=1024, n_embd=768,
              n_head=12, n_layer=12, n_positions=1024, resid_pdrop=0.1, summary_activation=None, summary_first_dropout=0.1,
              summary_proj_to_labels=True, summary_type="cls_index", summary_use_proj=True, vocab_size=50257,
              task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}}),
    gpt2_xl=dict(model_type="gpt2", n_ctx=1024, n_embd=1600, n_head=25, n_layer=48, n_positions=1024, output_past=True,
                 n_special=0, predict_special_tokens=True, vocab_size=50257, task_specific_params={"text-generation": {}}),
    distilgpt2=dict(model_type="gpt2", _num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, n_ctx=1024, n_embd=768,
                    n_head=12, n_layer=6, n_positions=1024, vocab_size=50257),
    qwen2_5_1_5b=dict(architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643, eos_token_id=151643,
                      hidden_act="silu", hidden_size=1536, initializer_range=0.02, intermediate_size=8960, max_position_embeddings=131072,
                      max_window_layers=28, model_type="qwen2", num_attention_heads=12, num_hidden_layers=28, num_key_value_heads=2,
                      rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=131072, tie_word_embeddings=True, torch_dtype="bfloat16",
                      use_cache=True, use_mrope=False, use_sliding_window=False, vocab_size=151936),
    llama_3_2_3b=dict(architectures=["LlamaForCausalLM"], attention_bias=False, attention_dropout=0.0, bos_token_id=128000,
                      eos_token_id=128001, head_dim=128, hidden_act="silu", hidden_size=3072, initializer_range=0.02,
                      intermediate_size=8192, max_position_embeddings=131072, mlp_bias=False, model_type="llama",
                      num_attention_heads=24, num_hidden_layers=28, num_key_value_heads=8, pretraining_tp=1, rms_norm_eps=1e-05,
                      rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                    "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                      rope_theta=500000.0, tie_word_embeddings=True, torch_dtype="bfloat16", use_cache=True, vocab_size=128256))

@pytest.mark.parametrize("name,shape", [("gpt2", (12, 12, 768, 1024)), ("gpt2_xl", (48, 25, 1600, 1024)), ("distilgpt2", (6, 12, 768, 1024)),
                                        ("qwen2_5_1_5b", (28, 12, 1536, 131072)), ("llama_3_2_3b", (28, 24, 3072, 131072))])
def test_the_hubs_own_configs_are_read(name, shape):
    """The configs users bring (the README's --init_from gpt2 among them) carry keys of older
    transformers versions that change nothing: read, not refused."""
    transformers = pytest.importorskip("transformers")
    c = transformers.AutoConfig.for_model(**HUB[name])
    args, _ = pretrained.hf_config(c, name)
    assert (args["n_layer"], args["n_head"], args["n_embd"], args["block_size"]) == shape
    if HUB[name]["model_type"] == "llama":  # swish is SiLU by another name (transformers' ACT2FN)
        assert pretrained.hf_config(transformers.AutoConfig.for_model(**{**HUB[name], "hidden_act": "swish"}), name)[0] == args
    c.n_ctx = 512  # a GPT-2 whose n_ctx is not its n_positions: refused by name
    if HUB[name]["model_type"] == "gpt2":
        with pytest.raises(DtrError, match="n_ctx=512 .a context other than n_positions"):
            pretrained.hf_config(c, name)

def test_unsupported_models_are_refused(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT)
    base = ["--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--data_dir", str(tmp_path / "d"), "--out_dir", str(tmp_path / "o")]
    size = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=48, vocab_size=320)
    cases = [  # (what is saved, what the one line names); only config.json is read before refusing
        ("qwen3", dict(**size), "model_type 'qwen3'"),  # q/k norms
        ("llama", dict(**size, rope_parameters=dict(rope_type="yarn", rope_theta=1e4, factor=2.0)), "rope_parameters="),
        ("llama", dict(**size, attention_bias=True), "attention_bias=True"),
        ("llama", dict(**size, partial_rotary_factor=0.5), "partial_rotary_factor=0.5 (rotations on part of each head only)"),
        ("mistral", dict(**size, sliding_window=16), "sliding window of 16 tokens"),
        ("llama", dict(**size, some_new_switch=3), "some_new_switch=3"),
        ("gpt2", dict(n_layer=2, n_embd=32, n_head=2, scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx=True"),
    ]
    for i, (kind, switches, says) in enumerate(cases):
        transformers.AutoConfig.for_model(kind, **switches).save_pretrained(tmp_path / str(i))
        line = refused_here(dtr.main, base + ["--init_from", str(tmp_path / str(i)), "--block_size", "32"], capsys)
        assert says in line and "not implement" in line, line
    transformers.AutoConfig.for_model("llama", **size).save_pretrained(tmp_path / "fine")  # a teacher brings its own shape
    assert "brings its own" in refused(base + ["--init_from", str(tmp_path / "fine"), "--arch", "llama"])  # as a script
    fine = base + ["--init_from", str(tmp_path / "fine")]  # a flag the import would override is refused, not ignored
    assert "--n_layer 3 is the shape of a teacher trained here; --init_from " in refused_here(dtr.main, fine + ["--n_layer", "3"], capsys)
    assert "brings its own tokenizer" in refused_here(dtr.main, fine + ["--tokenizer", "char"], capsys)
    assert f"--block_size 4096 is more than {tmp_path / 'fine'}'s context (2048); pass 2048 or less" in \
        refused_here(dtr.main, fine + ["--block_size", "4096"], capsys)

# ---- an import is the model, or it is refused by name ----

def save_weights(folder, sd, layout):
    """Replace a save_pretrained folder's weights by sd: one safetensors file, two shards and their index, or a .bin."""
    from safetensors.torch import save_file
    for f in os.listdir(folder):
        if f.startswith(("model", "pytorch_model")):
            os.remove(folder / f)
    if layout == "bin":
        return torch.save(sd, folder / "pytorch_model.bin")
    names = sorted(sd)
    shards = {"model.safetensors": names} if layout == "one" else \
        {f"model-0000{i + 1}-of-00002.safetensors": names[i::2] for i in range(2)}
    for f, keys in shards.items():
        save_file({k: sd[k].contiguous() for k in keys}, folder / f, metadata={"format": "pt"})
    if layout == "sharded":
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}))

def without(*names):
    return lambda sd: {k: v for k, v in sd.items() if k not in names}

def prefixed(prefix):
    return lambda sd: {prefix + k: v for k, v in sd.items()}

def import_refused(tmp_path, capsys, out=None):
    """train_teacher.py --init_from <tmp_path>/m on a small text, refused: its one error line."""
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT * 3)
    return refused_here(train_teacher.main, ["--init_from", str(tmp_path / "m"), "--dataset", str(tmp_path / "mine.txt"), "--preset",
                                             "tiny", "--block_size", "32", "--data_dir", str(tmp_path / "d"),
                                             "--out_dir", str(out or tmp_path / "o")], capsys)

@pytest.mark.parametrize("kind,switches,edit,layout,says", [
    pytest.param("llama", dict(tie_word_embeddings=False), without("lm_head.weight"), "one", "missing lm_head.weight (the file lacks them);", id="untied-no-lm_head"),
    pytest.param("llama", {}, without("model.layers.1.mlp.up_proj.weight"), "one", "missing model.layers.1.mlp.up_proj.weight (the file lacks them);", id="no-layer-weight"),
    pytest.param("llama", {}, without("model.norm.weight"), "sharded", "missing model.norm.weight (the file lacks them);", id="sharded"),
    pytest.param("llama", {}, without("model.layers.0.self_attn.k_proj.weight"), "bin", "missing model.layers.0.self_attn.k_proj.weight (the file lacks them);", id="bin"),
    pytest.param("qwen2", {}, without("model.layers.0.self_attn.q_proj.bias"), "one", "missing model.layers.0.self_attn.q_proj.bias (the file lacks them);", id="qwen2-no-bias"),
    pytest.param("gpt2", dict(vocab_size=50257), without("transformer.wpe.weight", "transformer.h.0.ln_1.bias"), "one",
                 "missing transformer.h.0.ln_1.bias, transformer.wpe.weight (the file lacks them);", id="gpt2-no-wpe"),
    pytest.param("llama", {}, prefixed("base_model.model."), "sharded", "carry the prefix 'base_model.model.' (e.g. base_model.model.lm_head."
                 "weight), a PEFT model's: merge the adapter (merge_and_unload()) and save the merged model", id="peft-prefix"),
    pytest.param("gpt2", dict(vocab_size=50257), prefixed("module."), "one", "carry the prefix 'module.' (e.g. module.transformer.h.0.attn.c_attn.weight), "
                 "DDP's: save the unwrapped model (model.module)", id="ddp-prefix"),
    pytest.param("mistral", {}, prefixed("backbone."), "one", "carry the prefix 'backbone.' (e.g. backbone.lm_head.weight), "
                 "a wrapper's: save the unwrapped model", id="any-prefix"),
    pytest.param("llama", {}, lambda sd: {**sd, "extra.a": torch.zeros(1), "extra.b": torch.zeros(1),
                                          **{f"model.layers.{i}.self_attn.o_proj.bias": torch.zeros(32) for i in (0, 1)}}, "one",
                 "unexpected extra.a, extra.b, model.layers.0.self_attn.o_proj.bias and 1 more (the model has no place for them);", id="unexpected"),
    pytest.param("llama", {}, lambda sd: {**sd, "model.layers.0.mlp.up_proj.weight": torch.zeros(40, 32)}, "one",
                 "misshapen model.layers.0.mlp.up_proj.weight (40, 32), not (48, 32);", id="misshapen"),
])
def test_weights_that_are_not_the_model_are_refused_by_name(tmp_path, capsys, kind, switches, edit, layout, says):
    # each converted with "import checked: logits match" before: transformers fills a tensor the file lacks with random
    # numbers (and ignores one it does not know), and the logit check compared that random model with itself
    from safetensors.torch import load_file as load_safetensors
    hf_folder(tmp_path / "m", kind, **switches)
    save_weights(tmp_path / "m", edit(load_safetensors(tmp_path / "m" / "model.safetensors")), layout)
    line = import_refused(tmp_path, capsys, tmp_path / "o" / "run")
    assert line.startswith(f"error: {tmp_path / 'm'}'s weights ") and says in line, line
    assert not os.path.exists(tmp_path / "o")  # refused inside the run folder's claim: the folders it made are gone

def shards_then(change):
    """The folder's weights as two shards and their index, then change(folder, state_dict, shards, index)."""
    def edit(folder, sd):
        from safetensors.torch import load_file as load_safetensors, save_file
        save_weights(folder, sd, "sharded")
        shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        change(folder, sd, shards, index, lambda f, d: save_file(d, folder / f, metadata={"format": "pt"}), load_safetensors)
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return edit

@pytest.mark.parametrize("edit,says", [
    pytest.param(shards_then(lambda folder, sd, shards, index, save, load: save(shards[1], {**load(folder / shards[1]),
                 "model.norm.weight": sd["model.norm.weight"] + 5})), "model.norm.weight in two shards", id="twice"),
    pytest.param(shards_then(lambda folder, sd, shards, index, save, load: save("model.safetensors", sd)),
                 "holds both model.safetensors and model.safetensors.index.json (its shards): two copies", id="stale-single-file"),
    pytest.param(shards_then(lambda folder, sd, shards, index, save, load: index["weight_map"].update(
                 {k: shards[1 - shards.index(f)] for k, f in index["weight_map"].items() if k == "model.norm.weight"})),
                 "which the index places elsewhere or not at all; model.norm.weight not in the shard the index names", id="index-elsewhere"),
    pytest.param(shards_then(lambda folder, sd, shards, index, save, load: index["weight_map"].pop("lm_head.weight", None)
                 or index["weight_map"].pop("model.norm.weight")), "which the index places elsewhere or not at all", id="index-lacks"),
])
def test_weight_files_that_disagree_are_refused_by_name(tmp_path, capsys, edit, says):
    # transformers reads one copy of a tensor the folder holds twice (the single file beside shards, the later shard)
    # and does not check the index against the shards: the logit check then compares that copy with itself
    from safetensors.torch import load_file as load_safetensors
    hf_folder(tmp_path / "m", "llama")
    edit(tmp_path / "m", load_safetensors(tmp_path / "m" / "model.safetensors"))
    line = import_refused(tmp_path, capsys)
    assert line.startswith(f"error: {tmp_path / 'm'}") and says in line, line
    assert not os.path.exists(tmp_path / "o" / "teacher.pt")

@pytest.mark.parametrize("kind,head,emb", [("llama", "lm_head.weight", "model.embed_tokens.weight"),
                                           ("gpt2", "lm_head.weight", "transformer.wte.weight")])
def test_a_tied_config_with_its_own_output_layer_is_refused_by_name(tmp_path, capsys, kind, head, emb):
    # transformers keeps the file's own output layer (untied, with a warning); our model would tie it to the embeddings
    from safetensors.torch import load_file as load_safetensors
    hf_folder(tmp_path / "m", kind, tie_word_embeddings=True, **(dict(vocab_size=50257) if kind == "gpt2" else {}))
    sd = load_safetensors(tmp_path / "m" / "model.safetensors")
    save_weights(tmp_path / "m", {**sd, head: sd[emb] + 1}, "one")
    line = import_refused(tmp_path, capsys)
    assert line == f"error: {tmp_path / 'm'}'s config says tie_word_embeddings=True, but its weights hold an output layer of their " \
                   f"own, other than the embeddings; set \"tie_word_embeddings\": false in its config.json"

def test_a_folder_without_its_tokenizer_says_so(tmp_path, capsys):
    hf_folder(tmp_path / "m", "llama")
    for f in os.listdir(tmp_path / "m"):
        if f.startswith(("tokenizer", "special_tokens")):
            os.remove(tmp_path / "m" / f)
    line = import_refused(tmp_path, capsys)
    assert line.startswith(f"error: transformers could not load its tokenizer from {tmp_path / 'm'} (") and \
        line.endswith(f"save the tokenizer into the folder too (AutoTokenizer...save_pretrained('{tmp_path / 'm'}'))"), line

@pytest.mark.parametrize("layout", ["sharded", "bin"])
def test_sharded_and_bin_weights_import_exactly(tmp_path, layout):
    from safetensors.torch import load_file as load_safetensors
    hf = hf_folder(tmp_path / "m", "llama", tie_word_embeddings=False)
    save_weights(tmp_path / "m", load_safetensors(tmp_path / "m" / "model.safetensors"), layout)
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT * 3)
    train_teacher.main(["--init_from", str(tmp_path / "m"), "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--block_size", "32",
                        "--data_dir", str(tmp_path / "d"), "--out_dir", str(tmp_path / "o")])
    model, _ = train_teacher.load_model(str(tmp_path / "o" / "teacher.pt"), "cpu", "")
    idx = torch.randint(320, (2, 32))
    with torch.no_grad():
        assert rel_err(model(idx)[0], hf(idx).logits) < 1e-5

def nanogpt_variant(root, edit):
    """write_nanogpt_checkpoint's ckpt.pt with its weights (their keys without _orig_mod.) edited; returns (path, the model)."""
    want = write_nanogpt_checkpoint(root)
    ckpt = torch.load(root / "out" / "ckpt.pt", weights_only=True)
    ckpt["model"] = edit({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    torch.save(ckpt, root / "out" / "ckpt.pt")
    return str(root / "out" / "ckpt.pt"), want

MASKS = {f"transformer.h.{i}.attn.bias": torch.ones(1, 1, 32, 32).tril() for i in (0, 1)}  # nanoGPT's causal masks (before flash attention)

@pytest.mark.parametrize("edit,says", [
    pytest.param(prefixed("module."), "every weight under 'module.' (DDP's), read without it", id="ddp"),
    pytest.param(prefixed("module._orig_mod."), "every weight under '_orig_mod.' (torch.compile's), read without it", id="ddp-compiled"),
    pytest.param(lambda sd: {**sd, **MASKS}, "teacher  imported", id="masks-dropped"),
    pytest.param(lambda sd: {("module." if "h.1" in k else "") + k: v for k, v in sd.items()},
                 "error: {ckpt}'s weights carry the prefix 'module.' (e.g. module.transformer.h.1.attn.c_attn.weight), DDP's: "
                 "save the unwrapped model (model.module)", id="prefix-on-some-keys"),
    pytest.param(without("transformer.h.1.mlp.c_fc.weight"), "error: {ckpt}'s weights are not the model its config describes: missing "
                 "transformer.h.1.mlp.c_fc.weight (the file lacks them);", id="missing"),
    pytest.param(lambda sd: {**sd, "transformer.h.0.attn.c_attn.bias": torch.zeros(48)}, "error: {ckpt}'s weights are not the model its "
                 "config describes: unexpected transformer.h.0.attn.c_attn.bias (the model has no place for them);", id="unexpected"),
])
def test_nanogpt_checkpoint_keys(tmp_path, capsys, edit, says):
    # a DDP (or DDP of torch.compile) save holds the very tensors under a prefix on every key: read as nanoGPT reads _orig_mod.;
    # a prefix on some keys, a missing or an unexpected tensor is refused by name (before: a generic "does not fit")
    ckpt, want = nanogpt_variant(tmp_path, edit)
    (tmp_path / "mine.txt").write_text("".join(VOCAB[i] for i in torch.randint(len(VOCAB), (6000,), generator=torch.Generator().manual_seed(0))))
    args = ["--init_from", ckpt, "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--data_dir", str(tmp_path / "d"),
            "--out_dir", str(tmp_path / "o")]
    if says.startswith("error: "):
        assert refused_here(train_teacher.main, args, capsys).startswith(says.format(ckpt=ckpt))
        return
    train_teacher.main(args)
    assert says in capsys.readouterr().out
    got = torch.load(tmp_path / "o" / "teacher.pt", weights_only=True)["state_dict"]
    assert got.keys() == want.state_dict().keys() and all(torch.equal(got[k], v) for k, v in want.state_dict().items())

def test_unsupported_settings_of_a_supported_family_are_named(tmp_path, capsys):
    # a Llama with attention_bias=True was refused as if it were no Llama: "pass ... a GPT-2, Llama, Qwen2 or Mistral model"
    transformers = pytest.importorskip("transformers")
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT)
    size = dict(num_hidden_layers=2, num_attention_heads=4, hidden_size=32, intermediate_size=48, vocab_size=320)
    cases = [
        ("llama", dict(attention_bias=True), "is a llama model with attention_bias=True (biases on q, k, v and o; Qwen2's q, k, v biases "
                                             "are implemented, a bias on o is not), which this project does not implement; only a llama without it converts"),
        ("llama", dict(mlp_bias=True), "is a llama model with mlp_bias=True (biases in the MLP's"),
        ("mistral", dict(hidden_act="gelu"), "is a mistral model with hidden_act='gelu' (an MLP activation other than SiLU)"),
        ("qwen2", dict(rope_parameters=dict(rope_type="linear", rope_theta=1e4, factor=2.0)), "(rope_scaling of another kind than Llama 3's)"),
        ("llama", dict(head_dim=16), "is a llama model with head_dim=16 (heads whose width"),
        ("llama", dict(tie_encoder_decoder=True), "is a llama model with tie_encoder_decoder=True (a setting this project does not read)"),
        ("gpt2", dict(n_layer=2, n_embd=32, n_head=2, activation_function="relu"), "is a gpt2 model with activation_function='relu' (a GELU other"),
        ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=0), "attends within a sliding window of 16 tokens"),
    ]
    for i, (kind, switches, says) in enumerate(cases):
        transformers.AutoConfig.for_model(kind, **{**(size if kind != "gpt2" else {}), **switches}).save_pretrained(tmp_path / str(i))
        line = refused_here(train_teacher.main, ["--init_from", str(tmp_path / str(i)), "--dataset", str(tmp_path / "mine.txt"), "--preset",
                                                 "tiny", "--block_size", "32", "--out_dir", str(tmp_path / "o")], capsys)
        assert says in line and pretrained.INIT_FIX not in line, line

# ---- a reused teacher, data cache or tokenizer is the same content, not the same path ----

def test_a_folder_saved_again_in_place_is_never_reused_as_the_old_one(tmp_path, capsys):
    hf_folder(tmp_path / "llama", "llama")
    (tmp_path / "mine.txt").write_text(SAMPLE_TEXT * 3)
    args = ["--init_from", str(tmp_path / "llama"), "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--block_size", "32",
            "--data_dir", str(tmp_path / "d"), "--out_dir", str(tmp_path / "o")]
    train_teacher.main(args)
    train_teacher.main(args)
    assert "teacher  reusing" in capsys.readouterr().out  # the same folder: its teacher.pt is reused
    hf_folder(tmp_path / "llama", "llama", seed=1)  # new weights, the same tokenizer
    line = refused_here(train_teacher.main, args, capsys)
    assert line == (f"error: {tmp_path / 'llama'}'s weights or config have changed since {tmp_path / 'o' / 'teacher.pt'} was "
                    f"imported from it; delete {tmp_path / 'o' / 'teacher.pt'} to import it again, or pass another --out_dir")
    # a new tokenizer too: a fresh --out_dir encodes the text again with it (the data cache was keyed by the folder's path)
    hf_folder(tmp_path / "llama", "llama", seed=1, tokens=280)
    train_teacher.main(with_out_dir(args, tmp_path / "o2"))
    assert f"was encoded with another version of the teacher's tokenizer ({tmp_path / 'llama'}); encoding again" in capsys.readouterr().out
    train = prepare.load_data(dtr.parse_args(with_out_dir(args, tmp_path / "o2")))[0]
    new = pretrained.auto_tokenizer(str(tmp_path / "llama"))
    assert len(new) == 280 and train[:30].tolist() == new.encode(SAMPLE_TEXT, add_special_tokens=False)[:30]
    # the first run's teacher is neither reused by its command nor decoded with the new tokenizer
    assert "teacher.pt was made from another tokenizer; " in refused_here(train_teacher.main, args, capsys)
    line = refused_here(dtr.main, ["--sample", str(tmp_path / "o" / "teacher.pt"), "--sample_tokens", "5"], capsys)
    assert line.startswith(f"error: {tmp_path / 'llama'}'s tokenizer is not the one this run's ids were made with")

def test_a_nanogpt_checkpoint_or_meta_replaced_in_place_is_never_reused(tmp_path, capsys):
    ckpt, _ = nanogpt_variant(tmp_path, lambda sd: sd)
    (tmp_path / "mine.txt").write_text(VOCAB * 300)
    args = ["--init_from", ckpt, "--dataset", str(tmp_path / "mine.txt"), "--preset", "tiny", "--data_dir", str(tmp_path / "d"),
            "--out_dir", str(tmp_path / "o")]
    train_teacher.main(args)
    with open(tmp_path / "data" / "mine" / "meta.pkl", "wb") as f:  # the same characters, in another order
        pickle.dump({"vocab_size": len(VOCAB), "itos": dict(enumerate(VOCAB[::-1]))}, f)
    assert "teacher.pt was made from another tokenizer; " in refused_here(train_teacher.main, args, capsys)
    train_teacher.main(with_out_dir(args, tmp_path / "o2"))  # a fresh folder: the text encoded again, in the new ids
    assert prepare.load_data(dtr.parse_args(args))[0][:3].tolist() == [len(VOCAB) - 1 - VOCAB.index(c) for c in VOCAB[:3]]
    nanogpt_variant(tmp_path / "again", lambda sd: {k: v + 1 for k, v in sd.items()})
    shutil.copy(tmp_path / "again" / "out" / "ckpt.pt", ckpt)  # new weights in place
    assert "weights or config have changed since" in refused_here(train_teacher.main, with_out_dir(args, tmp_path / "o2"), capsys)

def test_arch_llama_trains_a_llama_shaped_teacher(tmp_path, data_dir):
    train_teacher.main(["--arch", "llama", "--preset", "tiny", "--max_iters", "2", "--data_dir", data_dir, "--out_dir", str(tmp_path)])
    args = torch.load(tmp_path / "teacher.pt", weights_only=False)["model_args"]
    assert (args["pos"], args["n_kv_head"], args["norm"], args["mlp"], args["bias"]) == ("rope", 1, "rmsnorm", "swiglu", False)
    with pytest.raises(DtrError, match="written with arch=llama but this run has arch=gpt2"):  # not reused as another shape
        dtr.run(dtr.parse_args(["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(tmp_path)]))

# ---- torchrun ----

def test_torchrun_teacher_step_matches_one_process(data_dir, tmp_path):
    # each of 2 processes takes 4 of the step's 8 sequences and DDP averages the gradients; one
    # process takes all 8, in 1 or in 2 micro-batches. Same global batch, so after 3 steps the
    # weights agree up to float summation order (observed ~1e-7 relative); a process training on
    # the wrong slice, or on the whole batch, moves them by ~1e-3.
    args = ["--preset", "tiny", "--data_dir", data_dir, "--max_iters", "3"]
    torchrun("train_teacher.py", args + ["--out_dir", str(tmp_path / "two")])
    train_teacher.main(args + ["--out_dir", str(tmp_path / "one")])
    train_teacher.main(args + ["--out_dir", str(tmp_path / "accum"), "--grad_accum", "2"])
    one = weights(tmp_path / "one" / "teacher.pt")
    cfg = dtr.parse_args(["--preset", "tiny", "--data_dir", data_dir])
    torch.manual_seed(cfg.seed)
    init = train_teacher.GPT(train_teacher.GPTConfig(**train_teacher.model_args(cfg, prepare.load_data(cfg)[2]))).state_dict()
    assert rel_err(one, torch.cat([v.double().flatten() for v in init.values()])) > 1e-3  # the steps did move the weights
    for other in ("two", "accum"):
        assert rel_err(weights(tmp_path / other / "teacher.pt"), one) < 1e-5

# ---- no silently wrong result: sizes, files, settings, folders (each through the real command line) ----

def test_window_starts_are_exact_past_2_24_tokens():
    # a split of over 2^24 tokens (a 200 MB text): float32 cannot hold every start there, and
    # torch.linspace put the last one past the last valid start, M
    n_tokens, T, n = 2**24 + 12_347 + 129, 128, 128  # M = 2^24 + 12,347: odd, so float32 rounds it
    M = n_tokens - T - 1
    assert torch.linspace(0, M, n)[-1].long() > M  # the old way, wrong here: what this test guards
    s, t = train_teacher.window_starts(n_tokens, T, n), train_teacher.window_starts(n_tokens, T, n, test=True)
    assert s[0] == 0 and s[-1] == M and len(s) == n and len(t) == n - 1
    assert s == [i * M // (n - 1) for i in range(n)]  # exact: floor(i M / (n - 1))
    assert all(a < m < b for a, m, b in zip(s, t, s[1:]))  # each test start strictly between two search starts
    batches = train_teacher.fixed_batches(torch.zeros(n_tokens, dtype=torch.int32), T, 16, 8, "cpu", test=True)
    assert sum(len(x) for x, _ in batches) == n - 1 and batches[0][0].dtype == torch.int64

def test_bpe_in_pieces_equals_the_whole_text(data_dir):
    text = open(os.path.join(data_dir, "shakespeare", "input.txt")).read()[:100_000]
    whole = prepare.gpt2_encoding().encode_ordinary(text)
    for size in (500, 7_777):  # pieces end only where GPT-2's pre-tokenizer splits anyway
        assert torch.cat([torch.from_numpy(p.astype("int64")) for p in prepare.raw_ids(text, "gpt2", size)]).tolist() == whole

def run_limited(args, script, max_file_bytes):
    """The real command line with a file-size limit (ulimit -f): every write past it fails, as on a full disk."""
    import resource
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return subprocess.run([sys.executable, script] + args, cwd=HERE, capture_output=True, text=True, timeout=300, preexec_fn=limit)

def test_a_failed_write_is_one_line_and_leaves_no_partial_file(data_dir, tmp_path):
    files = lambda: sorted(os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs if f != ".lock")
    os.makedirs(tmp_path / "data" / "shakespeare")  # the text only (the shared folder may hold BPE's cache too)
    shutil.copy(os.path.join(data_dir, "shakespeare", "input.txt"), tmp_path / "data" / "shakespeare")
    args = ["--preset", "tiny", "--max_iters", "2", "--data_dir", str(tmp_path / "data"), "--out_dir", str(tmp_path / "o")]
    # the data cache (train.bin, ~2 MB) past a 100 kB limit: no train.bin a later run could trust
    r = run_limited(args, "train_teacher.py", 100_000)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot write" in r.stderr and "File too large" in r.stderr
    assert files() == [os.path.join("data", "shakespeare", "input.txt")]
    # the teacher (torch.save raises a RuntimeError for a failed write, from the OSError) past 300 kB
    prepare.load_data(dtr.Config(dataset="shakespeare_char", data_dir=str(tmp_path / "data")))
    before = files()
    r = run_limited(args, "train_teacher.py", 300_000)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write {tmp_path / 'o' / 'teacher.pt'} (File too large")
    assert files() == before  # neither teacher.pt nor a temp file

def test_a_busy_folder_is_refused_at_once(data_dir, tmp_path):
    from plumbing import claim
    with claim(str(tmp_path / "o")):  # this process holds it, as a run in progress would
        line = refused(["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(tmp_path / "o")])
    assert f"{tmp_path / 'o'} is in use by another run (process {os.getpid()}" in line

def test_an_out_dir_that_cannot_be_written_is_one_line(tiny_run, data_dir, tmp_path):
    # a folder under a regular file cannot be created, even by root (for whom chmod 555 stops nothing):
    # the lock, every write (the experiments' pictures and tables too) say so in one line, before any work
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    for script in ("dtr.py", "train_teacher.py"):
        line = refused(["--preset", "tiny", "--data_dir", data_dir, "--out_dir", str(out)], script)
        assert line == (f"error: cannot write {out} (Not a directory); pick a folder you can write to (--out_dir, --data_dir; "
                        f"an experiment's run folder or --out)")
    line = refused([os.path.join(tiny_run[1], "gla"), "--out", str(out)], "experiments/readme.py")
    assert line.startswith(f"error: cannot write {out}/") and "(Not a directory)" in line
    from plumbing import atomic_save, claim
    with pytest.raises(DtrError, match=f"cannot write {out}/r.json \\(Not a directory\\)"):
        atomic_save({"a": 1}, str(out / "r.json"))
    with pytest.raises(DtrError, match="cannot write .* \\(Not a directory\\)"), claim(str(out)):
        pass

@pytest.mark.parametrize("env,script", [
    pytest.param({"RANK": "1", "WORLD_SIZE": "2"}, "dtr.py", id="no-torchrun"),
    pytest.param({"WORLD_SIZE": "abc"}, "train_teacher.py", id="not-a-number"),
    pytest.param(dict(RANK="2", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="localhost", MASTER_PORT="29500"),
                 "experiments/bench_decode.py", id="rank-too-high")])
def test_torchrun_variables_left_in_the_environment_are_one_line(env, script, tmp_path, monkeypatch):
    # RANK and WORLD_SIZE without torchrun's other variables (an exported shell, a job script) made a
    # torch traceback or a batch-size error for processes that do not exist: one line that names them,
    # from every script (plumbing.cli checks them first)
    args = [str(tmp_path / "run")] if script.startswith("experiments") else ["--preset", "tiny", "--out_dir", str(tmp_path / "o")]
    line = refused(args, script, env=env)
    assert line.startswith(f"error: {' '.join(f'{k}={v}' for k, v in env.items())} in the environment, but not as "
                           f"torchrun sets them") and line.endswith(f"unset {' '.join(env)} to run in one process, or start with torchrun")
    assert not (tmp_path / "o").exists()
    from plumbing import launched
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(DtrError, match="not as torchrun sets them"):
        launched()
    for k, v in dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="localhost", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)
    assert launched() == (1, 2)  # as torchrun sets them

@pytest.mark.parametrize("flag,value", [("--max_iters", "\u0663"), ("--batch_size", "\u00b2"), ("--lr", "\uff12e-3"),
                                        ("--seed", "\uff17")])
def test_numbers_in_other_digits_are_one_line(flag, value):
    # int() reads Arabic-Indic and full-width digits and refuses '²', which str.isdigit() passes: ASCII only
    with pytest.raises(DtrError, match=f"argument {flag}: invalid (int|float) value: '{value}'"):
        dtr.parse_args(["--preset", "tiny", flag, value])

def test_number_lists_in_other_digits_are_one_line(tmp_path):
    # an int flag and the experiments' lists (--steps, --contexts: one rule, "ints>0"), on the real command line
    assert refused(["--preset", "tiny", "--max_iters", "\u0663"]) == "error: argument --max_iters: invalid int value: '\u0663'; see --help"
    line = refused([str(tmp_path), "--steps", "100,\u00b2"], "experiments/distill_curve.py")
    assert line.startswith("error: --steps '100,\u00b2' is not a comma-separated list of whole numbers from 1 to")
    from plumbing import RULES
    ok = RULES["ints>0"][0]
    assert ok("100,200") and ok(" 5 , 7") and not any(map(ok, ["0", "1,,2", "-3", "1.5", "\u0663", "\uff11", "9" * 5000, ""]))

def test_changed_teacher_settings_are_refused_not_ignored(tiny_run):
    # a finished teacher trained with other settings is never reused under this run's settings
    args, out, first = tiny_run
    for flag, value in (("--max_iters", "7"), ("--lr", "0.001"), ("--batch_size", "4"), ("--dropout", "0.1")):
        line = refused(args + [flag, value])
        assert os.path.join(out, "teacher.pt") in line and f"this run has {flag[2:]}=" in line and "another --out_dir" in line
    assert first["teacher"]["reused"] is False  # the run that trained it says so (later tests may rerun the folder)
    with open(os.path.join(out, "gla", "report.json")) as f:
        assert json.load(f)["config"]["max_iters"] == 200  # what the teacher was trained with, not a refused value

def test_files_of_an_older_version_are_refused_with_a_version_message(tiny_run, tmp_path):
    args, out, _ = tiny_run
    os.makedirs(tmp_path / "o")
    ckpt = torch.load(os.path.join(out, "teacher.pt"), weights_only=True)
    del ckpt["format"]  # as the previous release wrote it
    torch.save(ckpt, tmp_path / "o" / "teacher.pt")
    line = refused(with_out_dir(args, tmp_path / "o"))
    assert "teacher.pt was written by an older version of this project (file format 1, this one reads 2)" in line

def test_resume_states_load_on_the_cpu(tmp_path):
    # random-number states must reach set_rng_state / Generator.set_state as CPU tensors on every
    # device: partial checkpoints load onto the CPU, never onto the run's device
    from plumbing import Partial
    gen = torch.Generator().manual_seed(3)
    Partial(str(tmp_path / "p.partial.pt"), {"seed": 1}).save(gen=gen.get_state(), rng=torch.get_rng_state())
    saved = Partial(str(tmp_path / "p.partial.pt"), {"seed": 1}).load()
    assert saved["gen"].device.type == saved["rng"].device.type == "cpu"
    assert "device" not in inspect.signature(Partial.load).parameters and "device" not in inspect.signature(load_file).parameters
    torch.Generator().set_state(saved["gen"])
    torch.set_rng_state(saved["rng"])

def test_entry_points_share_the_data_checks_and_printing_never_fails(tmp_path):
    # training split too short once tokenised with gpt2: one line from train_teacher.py too
    (tmp_path / "short.txt").write_text("To be, or not to be, that is the question. " * 12)
    args = ["--dataset", str(tmp_path / "short.txt"), "--tokenizer", "gpt2", "--preset", "tiny", "--out_dir", str(tmp_path / "o"),
            "--data_dir", str(tmp_path / "d")]
    assert "split has" in refused(args, "train_teacher.py") and "fewer than the context (64) + 2" in refused(args, "train_teacher.py")
    # Greek text on a console that cannot show it (a Windows code page): the run finishes
    g = torch.Generator().manual_seed(0)
    greek = "".join(chr(0x3b1 + i) for i in range(20)) + " "
    (tmp_path / "greek.txt").write_text("".join(greek[i] for i in torch.randint(len(greek), (3000,), generator=g)))
    args = ["--dataset", str(tmp_path / "greek.txt"), "--preset", "tiny", "--max_iters", "5", "--distill_iters", "2",
            "--data_dir", str(tmp_path / "d"), "--out_dir", str(tmp_path / "g")]
    r = subprocess.run([sys.executable, "dtr.py"] + args, cwd=HERE, env={**os.environ, "PYTHONIOENCODING": "cp1252"},
                       capture_output=True, timeout=300)
    assert r.returncode == 0 and b"sample from M_opt" in r.stdout, r.stderr[-2000:]
