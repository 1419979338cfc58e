"""
A teacher you already have (--init_from): a nanoGPT checkpoint, GPT-2, or a Llama, Qwen2 or Mistral
model from Hugging Face transformers, read as our GPT's config (GPTConfig's arguments) and weights
(our state_dict's names), with its own tokenizer. train_teacher.py builds the model from them.

Our GPT keeps nanoGPT's module names, so a nanoGPT checkpoint's weights are our state_dict as they
are; GPT-2's once the four matrices its Conv1D layers store as (in, out) are transposed; the Llama
family's once q, k, v (and gate, up) are stacked into c_attn (and c_fc). Every switch a transformers
config sets is read into GPTConfig's arguments or refused, and the import is checked against
transformers' logits (check_logits).
"""
import functools
import hashlib
import os
import re

import torch

from plumbing import DtrError, first_words, load_file

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

NANOGPT_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")  # what model_args must hold

INIT_FIX = ("pass the ckpt.pt nanoGPT's train.py writes, or a GPT-2, Llama, Qwen2 or Mistral model: a folder saved "
            "by save_pretrained, or its hub name")

# what a transformers config may set: the switches read below, and what never changes the logits of a
# model in eval mode (dropout, token ids, labels, ...); any other switch that is on is refused, by name
READ = {"gpt2": {"vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function", "layer_norm_epsilon",
                 "scale_attn_weights", "scale_attn_by_inverse_layer_idx", "add_cross_attention", "tie_word_embeddings", "n_ctx",
                 "reorder_and_upcast_attn"},  # (only computes in fp32, which we do anyway)
        "llama": {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_parameters",
                  "rope_theta", "rope_scaling", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
                  "max_window_layers", "layer_types", "pretraining_tp", "partial_rotary_factor"}}  # (pretraining_tp: the same matmuls, split)
READ["qwen2"] = READ["mistral"] = READ["llama"]
IGNORED = {"_name_or_path", "architectures", "model_type", "transformers_version", "dtype", "torch_dtype", "use_cache",
           "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id", "attention_dropout", "resid_pdrop",
           "embd_pdrop", "attn_pdrop", "id2label", "label2id", "problem_type", "return_dict", "output_attentions",
           "output_hidden_states", "chunk_size_feed_forward", "tokenizer_class", "summary_type", "summary_use_proj",
           "summary_activation", "summary_proj_to_labels", "summary_first_dropout", "is_llama_config",  # (SmolLM2's export tag)
           "task_specific_params", "n_special", "predict_special_tokens", "output_past", "_num_labels", "num_labels",
           "gradient_checkpointing", "torchscript", "use_bfloat16", "finetuning_task"}  # (the hub's GPT-2 configs: generation, heads)
LLAMA3 = {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}
WHY = {  # each switch of a family we read but do not implement, and what it would change
    "attention_bias": "biases on q, k, v and o; Qwen2's q, k, v biases are implemented, a bias on o is not",
    "mlp_bias": "biases in the MLP's gate, up and down projections", "hidden_act": "an MLP activation other than SiLU",
    "head_dim": "heads whose width times their number is not hidden_size",
    "rope_parameters": "rope_scaling of another kind than Llama 3's", "layer_types": "layers other than (sliding) attention",
    "partial_rotary_factor": "rotations on part of each head only",
    "activation_function": "a GELU other than gelu, gelu_new or gelu_pytorch_tanh", "add_cross_attention": "cross-attention",
    "scale_attn_by_inverse_layer_idx": "attention scores divided by the layer's index",
    "n_ctx": "a context other than n_positions"}

# what a model saved from inside a wrapper carries before every key, and the fix
WRAPPERS = {"base_model.model.": "a PEFT model's: merge the adapter (merge_and_unload()) and save the merged model",
            "module.": "DDP's: save the unwrapped model (model.module)",
            "_orig_mod.": "torch.compile's: save the unwrapped model (model._orig_mod)"}

def init_name(init_from):
    """--init_from's name, for the data cache and the run folder: a hub name's last part (gpt2), or the
    folder's or the file's name (for nanoGPT's fixed ckpt.pt, its out_dir's)."""
    path = os.path.abspath(init_from) if os.path.exists(init_from) else init_from
    stem = os.path.splitext(os.path.basename(path))[0] if os.path.isfile(path) else os.path.basename(path)  # Qwen2.5-0.5B whole
    return os.path.basename(os.path.dirname(path)) if stem == "ckpt" else stem

def transformers_load(kind, name, **kwargs):
    """AutoConfig, AutoModelForCausalLM or AutoTokenizer from Hugging Face transformers, an optional dependency."""
    try:
        import transformers
    except ImportError:
        raise DtrError(f"--init_from {name} loads through Hugging Face transformers, which is not "
                       f"installed; pip install transformers") from None
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()  # our log says what happened; its notes on token lengths are not for us
    try:
        return getattr(transformers, kind).from_pretrained(name, **kwargs)
    except Exception as e:  # offline and not cached, or a folder that holds no such model
        what = {"AutoConfig": "its config", "AutoTokenizer": "its tokenizer"}.get(kind, "the model")
        fix = (f"save the tokenizer into the folder too (AutoTokenizer...save_pretrained('{name}'))"
               if kind == "AutoTokenizer" and os.path.isdir(name) else
               "download it once while online (it is cached in ~/.cache/huggingface), or pass a folder saved by save_pretrained")
        raise DtrError(f"transformers could not load {what} from {name} ({type(e).__name__}: {first_words(e)}); {fix}") from None

@functools.cache
def read_tokenizer(name, stamp):
    """(the tokenizer, its fingerprint: everything it encodes and decodes by), once per version of its files (stamp)."""
    tok = transformers_load("AutoTokenizer", name)
    text = tok.backend_tokenizer.to_str() if hasattr(tok, "backend_tokenizer") else repr(sorted(tok.get_vocab().items()))
    return tok, hashlib.sha256(text.encode()).hexdigest()

def auto_tokenizer(name, sha256=None, fingerprint=False):
    """An imported Llama, Qwen2 or Mistral's own tokenizer: a hub name, or a save_pretrained folder's path, read
    again when the folder is saved again. sha256: the fingerprint it must still have (a run's ids were made with
    it); fingerprint=True returns the fingerprint instead."""
    stamp = tuple((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in os.scandir(name)) if os.path.isdir(name) else None
    tok, sha = read_tokenizer(name, stamp)
    if sha256 and sha != sha256:
        raise DtrError(f"{name}'s tokenizer is not the one this run's ids were made with (it was saved again since); "
                       f"put that one back, or rerun with a fresh --out_dir")
    return sha if fingerprint else tok

GPT2_VOCAB = 50257

def teacher_vocab(cfg):
    """The imported teacher's tokens in id order: its meta.pkl's characters, or all ids of its own
    tokenizer (Llama, Qwen2, Mistral) or of GPT-2's, as they are."""
    if cfg.tokenizer == "auto":
        return list(range(len(auto_tokenizer(cfg.init_from))))
    if not cfg.meta:
        return list(range(GPT2_VOCAB))
    meta = load_file(cfg.meta, "pass --meta the meta.pkl of the data the model was trained on", ("itos", "vocab_size"), ours=False)
    try:
        return [meta["itos"][i] for i in range(meta["vocab_size"])]
    except (KeyError, TypeError):
        raise DtrError(f"{cfg.meta}'s itos does not map every id below its vocab_size to a character; pass --meta "
                       f"the meta.pkl nanoGPT's prepare.py wrote") from None

def from_transformers(init_from):
    """A folder saved by save_pretrained, or a hub name (gpt2, or owner/name)."""
    return init_from in GPT2_NAMES or os.path.isdir(init_from) or \
        (not os.path.exists(init_from) and re.fullmatch(r"[\w.-]+/[\w.-]+", init_from) and not init_from.endswith(".pt"))

def hf_config(c, name):
    """A transformers config as (our GPTConfig's arguments, what else it says: model_type, sliding_window)."""
    def refuse(k, why):  # a supported family: name the switch, not the families
        value = partial if k == "partial_rotary_factor" else getattr(c, k, None)
        raise DtrError(f"{name} is a {kind} model with {k}={value!r} ({why}), which this project does "
                       f"not implement; only a {kind} without it converts")
    kind = getattr(c, "model_type", "?")
    if kind not in READ:
        raise DtrError(f"{name} has model_type {kind!r} (not gpt2, llama, qwen2 or mistral), which this project does "
                       f"not implement; {INIT_FIX}")
    default = type(c)().to_dict()
    for k, v in c.to_dict().items():  # subtle: a switch we do not know is refused unless off or at its default
        if k not in READ[kind] | IGNORED and v not in (None, False, default.get(k)):
            refuse(k, "a setting this project does not read")
    if kind == "gpt2":
        gelu = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
        unsupported = {"activation_function": c.activation_function not in gelu, "add_cross_attention": c.add_cross_attention,
                       "scale_attn_by_inverse_layer_idx": c.scale_attn_by_inverse_layer_idx,
                       "n_ctx": getattr(c, "n_ctx", None) not in (None, c.n_positions)}
    else:
        rope = dict(getattr(c, "rope_parameters", None) or {"rope_theta": getattr(c, "rope_theta", 1e4), **(getattr(c, "rope_scaling", None) or {})})
        rope_type, theta = rope.pop("rope_type", rope.pop("type", "default")), rope.pop("rope_theta", 1e4)
        rope.setdefault("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0))
        partial = rope.pop("partial_rotary_factor")
        layer_types = getattr(c, "layer_types", None) or ["sliding_attention" if getattr(c, "sliding_window", None) else "full_attention"]
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        unsupported = {"hidden_act": c.hidden_act not in ("silu", "swish"), "head_dim": head_dim * c.num_attention_heads != c.hidden_size,
                       "partial_rotary_factor": partial != 1.0,
                       "attention_bias": getattr(c, "attention_bias", False), "mlp_bias": getattr(c, "mlp_bias", False),
                       "rope_parameters": (rope_type, set(rope)) not in (("default", set()), ("llama3", LLAMA3)),
                       "layer_types": set(layer_types) - {"full_attention", "sliding_attention"}}
    for k, bad in unsupported.items():
        if bad:
            refuse(k, WHY[k])
    if kind == "gpt2":
        return dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.n_positions, vocab_size=c.vocab_size,
                         gelu=gelu[c.activation_function], mlp_hidden=c.n_inner or 0, norm_eps=c.layer_norm_epsilon,
                         scale_attn=c.scale_attn_weights, tie_embeddings=c.tie_word_embeddings), {"model_type": kind}
    return dict(n_layer=c.num_hidden_layers, n_head=c.num_attention_heads, n_embd=c.hidden_size, vocab_size=c.vocab_size,
                     block_size=c.max_position_embeddings, bias=False, n_kv_head=c.num_key_value_heads, qkv_bias=kind == "qwen2",
                     norm="rmsnorm", norm_eps=c.rms_norm_eps, mlp="swiglu", mlp_hidden=c.intermediate_size, pos="rope",
                     rope_theta=theta, rope_scaling=rope or None, tie_embeddings=c.tie_word_embeddings), \
        {"model_type": kind, "sliding_window": c.sliding_window if "sliding_attention" in layer_types else None}

def hf_state_dict(sd, config):
    """A Llama-family state_dict under our names (config: our GPTConfig's arguments): q, k, v stacked into c_attn, gate and up into c_fc."""
    out = {"transformer.wte.weight": sd["model.embed_tokens.weight"], "transformer.ln_f.weight": sd["model.norm.weight"],
           "lm_head.weight": sd.get("lm_head.weight", sd["model.embed_tokens.weight"])}
    for i in range(config["n_layer"]):
        hf, ours = f"model.layers.{i}.", f"transformer.h.{i}."
        out[ours + "ln_1.weight"], out[ours + "ln_2.weight"] = sd[hf + "input_layernorm.weight"], sd[hf + "post_attention_layernorm.weight"]
        for p in ("weight", "bias")[:1 + config["qkv_bias"]]:
            out[ours + "attn.c_attn." + p] = torch.cat([sd[f"{hf}self_attn.{x}_proj.{p}"] for x in "qkv"])
        out[ours + "attn.c_proj.weight"] = sd[hf + "self_attn.o_proj.weight"]
        out[ours + "mlp.c_fc.weight"] = torch.cat([sd[hf + "mlp.gate_proj.weight"], sd[hf + "mlp.up_proj.weight"]])
        out[ours + "mlp.c_proj.weight"] = sd[hf + "mlp.down_proj.weight"]
    return out

def few(names, n=3):
    """The first n names, then how many more."""
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

def check_keys(name, missing, unexpected, expected, misshapen=()):
    """An import is the model only if every tensor comes from its file: one the file lacks (transformers would
    leave it random, and the logit check would compare a random model with itself), holds besides the model's
    (`expected`) or holds in another shape is refused by name; keys under a wrapper's prefix, with the fix."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    for k in unexpected:  # a wrapper's prefix over one of the model's keys: base_model.model.lm_head.weight
        prefix = next((k[:i + 1] for i, ch in enumerate(k) if ch == "." and k[i + 1:] in expected), None)
        if prefix:
            prefix = next((w for w in WRAPPERS if k.startswith(w)), prefix)
            fix = WRAPPERS.get(prefix, "a wrapper's: save the unwrapped model")
            raise DtrError(f"{name}'s weights carry the prefix {prefix!r} (e.g. {k}), {fix}")
    said = [f"missing {few(missing)} (the file lacks them)"] if missing else []
    said += [f"unexpected {few(unexpected)} (the model has no place for them)"] if unexpected else []
    said += [f"misshapen {few([f'{k} {tuple(a)}, not {tuple(b)}' for k, a, b in sorted(misshapen)])}"] if misshapen else []
    if said:
        raise DtrError(f"{name}'s weights are not the model its config describes: {'; '.join(said)}; "
                       f"save the whole model again (save_pretrained writes every weight)")

def check_weight_files(folder):
    """A save_pretrained folder holds one copy of each weight: a single file (model.safetensors or
    pytorch_model.bin) or an index and its shards, never both, and each shard holds exactly the tensors its
    index sends to it. Otherwise which copy transformers reads is not the file's say: refused, by name."""
    files = set(os.listdir(folder))
    for single in ("model.safetensors", "pytorch_model.bin"):
        index = single + ".index.json"
        if index not in files:
            continue
        if single in files:
            raise DtrError(f"{folder} holds both {single} and {index} (its shards): two copies of the weights; "
                           f"delete the stale one (save_pretrained writes one or the other)")
        weight_map = load_file(os.path.join(folder, index), "save the model again", ("weight_map",), ours=False)["weight_map"]
        held = {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(folder, shard)
            if not os.path.isfile(path):
                raise DtrError(f"{folder}/{index} names {shard}, which is missing; download or save the model again")
            try:  # the names only: a safetensors header, a memory-mapped .bin
                if shard.endswith(".safetensors"):
                    from safetensors import safe_open
                    with safe_open(path, "pt") as f:
                        keys = list(f.keys())
                else:
                    keys = list(torch.load(path, map_location="cpu", mmap=True, weights_only=True))
            except Exception as e:
                raise DtrError(f"cannot read {path} ({type(e).__name__}: {first_words(e)}); download or save the model again") from None
            for k in keys:
                held.setdefault(k, []).append(shard)
        twice = sorted(k for k, shards in held.items() if len(shards) > 1)
        elsewhere = sorted(k for k, shards in held.items() if weight_map.get(k) not in shards)
        unlisted = sorted(k for k, shard in weight_map.items() if shard not in held.get(k, []))
        said = [f"{few(twice)} in two shards"] if twice else []
        said += [f"{few([f'{k} in {held[k][0]}' for k in elsewhere])}, which the index places elsewhere or not at all"] if elsewhere else []
        said += [f"{few(unlisted)} not in the shard the index names"] if unlisted else []
        if said:
            raise DtrError(f"{folder}'s shards do not match {index}: {'; '.join(said)}; save the model again")

def read_source(init_from, weights=True):
    """--init_from as (our GPTConfig's arguments, its weights as our state_dict or None, what the source says: nanoGPT's
    dataset, iter_num and best_val_loss; transformers' model_type, sliding window, and the model itself, "hf")."""
    if from_transformers(init_from):
        c = transformers_load("AutoConfig", init_from)
        config, info = hf_config(c, init_from)
        if not weights:
            return config, None, info
        if os.path.isdir(init_from):
            check_weight_files(init_from)
        hf, loaded = transformers_load("AutoModelForCausalLM", init_from, dtype=torch.float32, output_loading_info=True,
                                       ignore_mismatched_sizes=True)  # (named below with the rest)
        sd = hf.eval().state_dict()
        check_keys(init_from, loaded["missing_keys"], loaded["unexpected_keys"], sd, loaded["mismatched_keys"])
        head, emb = hf.get_output_embeddings().weight, hf.get_input_embeddings().weight
        if config["tie_embeddings"] and not torch.equal(head, emb):  # transformers keeps the file's head: we would not
            raise DtrError(f"{init_from}'s config says tie_word_embeddings=True, but its weights hold an output layer of "
                           f"their own, other than the embeddings; set \"tie_word_embeddings\": false in its config.json")
        sd = {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()} if c.model_type == "gpt2" else hf_state_dict(sd, config)
        return config, sd, {**info, "hf": hf}
    if not os.path.isfile(init_from):
        raise DtrError(f"--init_from {init_from} is neither a file nor a folder; {INIT_FIX}")
    ckpt = load_file(init_from, INIT_FIX, ours=False)
    args = ckpt.get("model_args") if isinstance(ckpt, dict) else None
    if not isinstance(args, dict) or not isinstance(ckpt.get("model"), dict) or any(k not in args for k in NANOGPT_ARGS):
        raise DtrError(f"{init_from} is not a nanoGPT checkpoint (a dict with model, and model_args holding "
                       f"{', '.join(NANOGPT_ARGS)}); {INIT_FIX}")
    config = {**{k: args[k] for k in NANOGPT_ARGS}, "bias": args.get("bias", True), "dropout": args.get("dropout", 0.0)}
    info = {k: float(ckpt[k]) for k in ("iter_num", "best_val_loss") if k in ckpt}
    info["dataset"] = (ckpt.get("config") or {}).get("dataset", "")
    # subtle: a torch.compile'd model saves its weights under _orig_mod. (nanoGPT strips it), a DDP one under
    # module.: the same tensors, so a prefix on every key is read without it (one on some keys is refused)
    sd = ckpt["model"]
    while prefix := next((w for w in WRAPPERS if sd and all(k.startswith(w) for k in sd)), None):
        sd = {k.removeprefix(prefix): v for k, v in sd.items()}
        if weights:
            print(f"teacher  {init_from}: every weight under {prefix!r} ({WRAPPERS[prefix].split(':')[0]}), read without it")
    return config, sd, info

def import_settings(cfg, given=()):
    """--init_from decides the model and the tokenizer, checked before any work: its size replaces
    ours, the context is at most its own (and within its sliding window), and its vocabulary is a character
    model's meta.pkl (given, or found where nanoGPT keeps it), a Llama family model's own tokenizer, or else GPT-2's BPE."""
    shape = [f for f in ("arch", "n_layer", "n_head", "n_embd") if f in given] + ["arch"] * (cfg.arch != "gpt2")
    if shape:  # (given: the flags on the command line)
        raise DtrError(f"--{shape[0]} {getattr(cfg, shape[0])} is the shape of a teacher trained here; --init_from "
                       f"{cfg.init_from} brings its own: leave --{shape[0]} out")
    if "tokenizer" in given:
        raise DtrError(f"--tokenizer {cfg.tokenizer}: --init_from {cfg.init_from} brings its own tokenizer (a Llama family "
                       f"model's, nanoGPT's meta.pkl, or else GPT-2's BPE); leave --tokenizer out")
    config, _, info = read_source(cfg.init_from, weights=False)
    if "block_size" in given and cfg.block_size > config["block_size"]:
        raise DtrError(f"--block_size {cfg.block_size} is more than {cfg.init_from}'s context ({config['block_size']}); "
                       f"pass {config['block_size']} or less")
    cfg.n_layer, cfg.n_head, cfg.n_embd = config["n_layer"], config["n_head"], config["n_embd"]
    cfg.block_size = min(cfg.block_size, config["block_size"])  # a preset's longer context: the model's
    if info.get("sliding_window") and info["sliding_window"] < cfg.block_size:
        raise DtrError(f"{cfg.init_from} attends within a sliding window of {info['sliding_window']} tokens, which this "
                       f"project does not implement; pass --block_size {info['sliding_window']} or less")
    if info.get("model_type", "gpt2") != "gpt2":  # its own tokenizer, every id as it is
        if cfg.meta:
            raise DtrError(f"--meta is the tokenizer of a nanoGPT checkpoint; {cfg.init_from} brings its own")
        cfg.tokenizer = "auto"
        if len(teacher_vocab(cfg)) > config["vocab_size"]:
            raise DtrError(f"{cfg.init_from}'s tokenizer has {len(teacher_vocab(cfg)):,} tokens, more than its model's "
                           f"{config['vocab_size']:,} rows; pass a folder whose tokenizer is the model's")
        return
    here, looked = os.path.dirname(os.path.abspath(cfg.init_from)), []
    if not cfg.meta and not from_transformers(cfg.init_from):  # nanoGPT: out-dir/ckpt.pt, data/<dataset>/meta.pkl
        looked = [os.path.join(here, "meta.pkl")]
        if info["dataset"]:
            looked.append(os.path.normpath(os.path.join(here, "..", "data", info["dataset"], "meta.pkl")))
        cfg.meta = next((p for p in looked if os.path.isfile(p)), "")
    cfg.tokenizer = "char" if cfg.meta else "gpt2"
    n = len(teacher_vocab(cfg)) if cfg.meta else config["vocab_size"]
    if n != config["vocab_size"]:
        raise DtrError(f"{cfg.init_from} has a vocabulary of {config['vocab_size']} but {cfg.meta} of {n} "
                       f"characters; pass --meta with the meta.pkl of the data it was trained on")
    if not cfg.meta and config["vocab_size"] < GPT2_VOCAB:
        raise DtrError(f"{cfg.init_from} has a vocabulary of {config['vocab_size']}, fewer than GPT-2's {GPT2_VOCAB:,}, and no "
                       f"meta.pkl {'at ' + ' or '.join(looked) if looked else 'was given'}; pass --meta path/to/meta.pkl")

def check_logits(model, hf, name):
    """An import is the model only if it computes what the model does: our GPT against transformers'
    own forward on a few tokens (fp32; a wrong switch moves logits by 1e-1 and more, rounding by 1e-5)."""
    idx = torch.randint(model.config.vocab_size, (2, min(16, model.config.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits.float()
    diff = (ours - theirs).abs().max().item()
    if not diff <= 1e-4 * max(1.0, theirs.abs().max().item()):  # (not <=: a NaN is refused too)
        raise DtrError(f"{name}: our model's logits differ from transformers' by up to {diff:.3g}, so some setting of "
                       f"its config is not one we implement; {INIT_FIX}")
    print(f"teacher  import checked: logits match transformers' (max abs diff {diff:.1g})")

def files_sha256(paths):
    """One fingerprint of the files' bytes in turn, read 1 MiB at a time (of one file: its sha256)."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()

WEIGHT_FILES = (".safetensors", ".bin", ".index.json")  # with config.json, a save_pretrained folder's model

def init_sha256(init_from):
    """The fingerprint of --init_from's model, so that a reused teacher.pt is still its import: the file (nanoGPT's
    ckpt.pt), or the config and weight files of a save_pretrained folder (for a hub name, its downloaded copy).
    Its tokenizer has a fingerprint of its own (auto_tokenizer)."""
    if os.path.isfile(init_from):
        return files_sha256([init_from])
    if not os.path.isdir(init_from):  # a hub name: the copy transformers reads
        from transformers.utils import cached_file
        init_from = os.path.dirname(cached_file(init_from, "config.json"))
    return files_sha256(sorted(e.path for e in os.scandir(init_from) if e.name == "config.json" or e.name.endswith(WEIGHT_FILES)))
