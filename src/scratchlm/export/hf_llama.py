"""Hugging Face interop: a scratchlm checkpoint as a `LlamaForCausalLM` folder, and such a folder back as a run.

Our TransformerLM is the Llama architecture (pre-norm RMSNorm, SwiGLU, RoPE, grouped-query attention, no
biases), so conversion renames tensors and splits or joins our fused projections:

    ours (per layer i: layers.{i}.)     HF (model.layers.{i}.)
    embed.weight                        model.embed_tokens.weight
    attn_norm.weight                    input_layernorm.weight
    attn.qkv_proj.weight                self_attn.{q,k,v}_proj.weight   (row blocks H*hd, K*hd, K*hd)
    attn.o_proj.weight                  self_attn.o_proj.weight
    ffn_norm.weight                     post_attention_layernorm.weight
    ffn.gate_up_proj.weight             mlp.{gate,up}_proj.weight       (row blocks d_ff, d_ff)
    ffn.down_proj.weight                mlp.down_proj.weight
    norm.weight                         model.norm.weight
    lm_head.weight                      lm_head.weight                  (absent when tied)

No q/k permutation is needed: our RoPE pairs dimensions (i, i + hd/2) ("rotate half") exactly as HF Llama
does. What Llama cannot express (QK-norm, a sliding window) is refused, never silently dropped, and so are
HF configs our model cannot express (biases, scaled RoPE, another activation).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scratchlm.config import to_dict, write_run_info
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.tokenizer import Tokenizer
from scratchlm.tokenizer.io import from_printable
from scratchlm.train.checkpoint import load_model_state, load_trained_model, save_checkpoint
from scratchlm.train.config import TrainConfig

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"
# HF checkpoints written by older transformers versions store RoPE's inverse frequencies; they are derived
# from the config, so importing drops them.
_DERIVED_SUFFIX = ".rotary_emb.inv_freq"


# ---------------------------------------------------------------------------------------------
# config


def check_llama_compatible(config: ModelConfig) -> None:
    """Raise ValueError if `config` has a feature LlamaForCausalLM lacks (the export would compute another model)."""
    if config.qk_norm:
        raise ValueError("qk_norm=True cannot be exported as LlamaForCausalLM: Llama has no query/key norms")
    if config.sliding_window is not None:
        raise ValueError(
            f"sliding_window={config.sliding_window} cannot be exported as LlamaForCausalLM: "
            "Llama attends to all positions"
        )


def llama_config(model_config: ModelConfig, tokenizer: Tokenizer | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The HF config.json of `model_config`, readable by transformers 5 (rope_parameters) and 4.x (rope_theta).

    bos/eos are the tokenizer's <|endoftext|> (our only document separator) when it has one, else null:
    Llama's defaults (1 and 2) would name arbitrary tokens of our vocabulary.
    """
    check_llama_compatible(model_config)
    c = model_config
    eot = tokenizer.special_ids.get(EOT) if tokenizer is not None else None
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.ffn_dim,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_length,
        "rms_norm_eps": c.norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }


def model_config_from_llama(hf_config: dict[str, Any]) -> ModelConfig:
    """Our ModelConfig for an HF Llama config.json dict; ValueError for what our model cannot compute."""
    if hf_config.get("model_type") != "llama":
        raise ValueError(f"model_type {hf_config.get('model_type')!r} is not supported: only 'llama' "
                         "(LlamaForCausalLM)")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf_config]
    if missing:  # Llama's defaults are the 7B shape: a config without these is broken, not small
        raise ValueError(f"config.json lacks {missing}")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf_config['hidden_act']!r} is not supported: our SwiGLU uses silu")
    for key in ("attention_bias", "mlp_bias"):
        if hf_config.get(key):
            raise ValueError(f"{key}=true is not supported: our projections have no biases")
    d_model, n_heads = hf_config["hidden_size"], hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or d_model // n_heads
    if head_dim * n_heads != d_model:
        raise ValueError(f"head_dim {head_dim} is not hidden_size / num_attention_heads = {d_model} / {n_heads}")
    return ModelConfig(
        vocab_size=hf_config["vocab_size"],
        context_length=hf_config.get("max_position_embeddings", 2048),
        d_model=d_model,
        n_layers=hf_config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
        d_ff=hf_config["intermediate_size"],
        rope_theta=_rope_theta(hf_config),
        norm_eps=hf_config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
    )


def _rope_theta(hf_config: dict[str, Any]) -> float:
    """RoPE base from transformers 5's rope_parameters or 4.x's rope_theta; only unscaled ("default") RoPE."""
    params = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"RoPE type {rope_type!r} is not supported: our RoPE is unscaled ('default')")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported: our RoPE rotates every head dimension")
    return float(params.get("rope_theta", hf_config.get("rope_theta", 10_000.0)))


# ---------------------------------------------------------------------------------------------
# weights


def _layout(c: ModelConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """(our key, the HF keys it stacks in row order, their row counts) for every tensor: one table for both ways."""
    q, kv, d_ff = c.n_heads * c.head_dim, c.kv_heads * c.head_dim, c.ffn_dim
    table = [("embed.weight", ("model.embed_tokens.weight",), (c.vocab_size,))]
    for i in range(c.n_layers):
        o, h = f"layers.{i}.", f"model.layers.{i}."
        table += [
            (o + "attn_norm.weight", (h + "input_layernorm.weight",), (c.d_model,)),
            (o + "attn.qkv_proj.weight", tuple(h + f"self_attn.{p}_proj.weight" for p in "qkv"), (q, kv, kv)),
            (o + "attn.o_proj.weight", (h + "self_attn.o_proj.weight",), (c.d_model,)),
            (o + "ffn_norm.weight", (h + "post_attention_layernorm.weight",), (c.d_model,)),
            (o + "ffn.gate_up_proj.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), (d_ff, d_ff)),
            (o + "ffn.down_proj.weight", (h + "mlp.down_proj.weight",), (c.d_model,)),
        ]
    table.append(("norm.weight", ("model.norm.weight",), (c.d_model,)))
    if not c.tie_embeddings:
        table.append(("lm_head.weight", ("lm_head.weight",), (c.vocab_size,)))
    return table


def to_hf_state_dict(model: TransformerLM) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM tensors of `model`: contiguous copies (safetensors refuses views sharing memory)."""
    check_llama_compatible(model.config)
    ours = model.state_dict()
    return {
        hf_key: part.detach().clone(memory_format=torch.contiguous_format)
        for key, hf_keys, rows in _layout(model.config)
        for hf_key, part in zip(hf_keys, ours[key].split(rows), strict=True)
    }


def from_hf_state_dict(hf_sd: dict[str, torch.Tensor], model_config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our TransformerLM state_dict from HF Llama tensors (the inverse of to_hf_state_dict).

    Keys and shapes are checked first, so a mismatch names the tensor instead of failing in a concatenation.
    A tied model ignores an `lm_head.weight` (HF ties it to the embedding at load time too).
    """
    expected = {k: v.shape for k, v in to_hf_state_dict(TransformerLM(model_config, device="meta")).items()}
    missing = sorted(expected.keys() - hf_sd.keys())
    tied_head = "lm_head.weight" if model_config.tie_embeddings else None
    ignored = {k for k in hf_sd if k.endswith(_DERIVED_SUFFIX) or k == tied_head}
    unexpected = sorted(hf_sd.keys() - expected.keys() - ignored)
    if missing or unexpected:
        raise ValueError(f"HF weights do not fit the config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, shape in expected.items():
        if hf_sd[k].shape != shape:
            raise ValueError(f"HF tensor {k} has shape {tuple(hf_sd[k].shape)}, the config needs {tuple(shape)}")
    return {key: torch.cat([hf_sd[k] for k in hf_keys]) for key, hf_keys, _ in _layout(model_config)}


# ---------------------------------------------------------------------------------------------
# export


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float32,
              overwrite: bool = False) -> Path:
    """Write `out_dir` as an HF LlamaForCausalLM folder (config, safetensors weights, generation config, and the
    tokenizer when the run has one) from a checkpoint file or run folder. Returns `out_dir`.

    The folder appears complete or not at all; an existing non-empty `out_dir` is only replaced with `overwrite`.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point type, got {dtype}")
    out_dir = Path(out_dir)
    with _atomic_dir(out_dir, overwrite, source=Path(checkpoint)) as tmp:
        trained = load_trained_model(checkpoint)
        model, tokenizer = trained.model, trained.tokenizer
        config = llama_config(model.config, tokenizer, dtype)
        tensors = {k: v.to(dtype) for k, v in to_hf_state_dict(model).items()}
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})  # transformers expects format=pt
        _write_json(tmp / "config.json", config)
        eos = {k: config[k] for k in ("bos_token_id", "eos_token_id") if config[k] is not None}
        _write_json(tmp / "generation_config.json", eos)
        if tokenizer is not None:
            _write_hf_tokenizer(tmp, tokenizer, model.config)
    return out_dir


def _write_hf_tokenizer(directory: Path, tokenizer: Tokenizer, model_config: ModelConfig) -> None:
    """tokenizer.json plus the tokenizer_config.json that makes `AutoTokenizer.from_pretrained` load it as is
    (PreTrainedTokenizerFast: a model-specific class could rebuild the pre-tokenizer its own way)."""
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's vocab_size "
                         f"{model_config.vocab_size}")
    tokenizer.export_hf(directory / "tokenizer.json")
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_config.context_length,
        "clean_up_tokenization_spaces": False,
    }
    if EOT in tokenizer.special_ids:
        config |= {"bos_token": EOT, "eos_token": EOT}
    _write_json(directory / "tokenizer_config.json", config)


# ---------------------------------------------------------------------------------------------
# import


def import_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a scratchlm run folder (checkpoint.pt at step 0, config.json, run_info.json, and tokenizer/ when
    the HF folder has a byte-level BPE tokenizer.json) from an HF LlamaForCausalLM folder. Returns `out_dir`.

    Weights are read from model.safetensors or a sharded model.safetensors.index.json. A tokenizer we cannot
    reproduce exactly is left out with a warning: the model is still usable with token ids.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    with _atomic_dir(out_dir, overwrite, source=hf_dir) as tmp:
        model_config = model_config_from_llama(_read_json(hf_dir / "config.json"))
        model = TransformerLM(model_config)
        load_model_state(model, from_hf_state_dict(_read_weights(hf_dir), model_config), hf_dir)
        tokenizer = _import_tokenizer(hf_dir / "tokenizer.json")
        config = TrainConfig(model=model_config, out=str(out_dir))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        save_checkpoint(tmp / "checkpoint.pt", model=model, optimizer=None, step=0, config=to_dict(config),
                        tokenizer_sha256=tokenizer.hash if tokenizer is not None else None)
        write_run_info(tmp, config)
    return out_dir


def _read_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    if (hf_dir / WEIGHTS).is_file():
        return load_file(hf_dir / WEIGHTS)
    if (hf_dir / INDEX).is_file():
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(_read_json(hf_dir / INDEX).get("weight_map", {}).values())):
            tensors |= load_file(hf_dir / shard)
        return tensors
    raise FileNotFoundError(f"{hf_dir} has neither {WEIGHTS} nor {INDEX} (only safetensors weights are read)")


def _import_tokenizer(path: Path) -> Tokenizer | None:
    if not path.is_file():
        log.warning("%s not found: importing the model without a tokenizer", path)
        return None
    try:
        return tokenizer_from_hf(_read_json(path))
    except ValueError as e:
        log.warning("%s: %s; importing the model without a tokenizer", path, e)
        return None


def tokenizer_from_hf(content: dict[str, Any]) -> Tokenizer:
    """Our Tokenizer from a GPT-2 style byte-level BPE tokenizer.json; ValueError for anything else.

    Vocab and merge strings go back to bytes through GPT-2's byte-unicode table; every added token (special
    or not: both are matched before pre-tokenization) becomes a special token. The pattern is the regex of a
    Split pre-tokenizer (ours, GPT-4 / Llama 3 style) or GPT-2's for a plain ByteLevel one. Assumed, as for
    those patterns: the regex matches every character, so Split's "Isolated" (keep the gaps) and our findall
    (drop them) agree. A post-processor (e.g. a BOS template) is not imported: `encode` adds no tokens.
    """
    model = content.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"model type {model.get('type')!r} is not BPE")
    for option in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            raise ValueError(f"BPE option {option} is not byte-level BPE")
    if content.get("normalizer"):
        raise ValueError(f"normalizer {content['normalizer'].get('type')!r} is not supported")
    if (content.get("decoder") or {}).get("type") != "ByteLevel":
        raise ValueError("the decoder is not ByteLevel")
    if model.get("ignore_merges"):
        log.warning("tokenizer.json has ignore_merges=true; our encoder always applies the merges, so a word that "
                    "is itself a token but is not built by the merges encodes differently")
    pattern = _pretokenizer_pattern(content.get("pre_tokenizer"))
    added = {t["id"]: t["content"] for t in sorted(content.get("added_tokens", []), key=lambda t: t["id"])}
    vocab = {i: from_printable(s) for s, i in model.get("vocab", {}).items() if i not in added}
    vocab |= {i: s.encode("utf-8") for i, s in added.items()}
    merges = [_merge_pair(m) for m in model.get("merges", [])]
    return Tokenizer(vocab, merges, list(added.values()), pattern)


def _pretokenizer_pattern(pre: dict[str, Any] | None) -> str:
    """The pre-tokenization regex of a byte-level pre-tokenizer: ByteLevel alone, or Split then ByteLevel."""
    if not pre:
        raise ValueError("there is no pre-tokenizer")
    steps = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if types[-1:] != ["ByteLevel"] or steps[-1].get("add_prefix_space"):
        raise ValueError(f"pre-tokenizer {types} is not GPT-2 style byte-level (ByteLevel last, no prefix space)")
    byte_level = steps[-1]
    if types == ["ByteLevel"] and byte_level.get("use_regex", True):
        return "gpt2"  # ByteLevel's built-in regex is GPT-2's
    if types == ["Split", "ByteLevel"] and not byte_level.get("use_regex", True):
        split = steps[0]
        keeps_matches = (split.get("behavior"), split.get("invert")) in (("Removed", True), ("Isolated", False))
        if "Regex" in (split.get("pattern") or {}) and keeps_matches:
            return split["pattern"]["Regex"]
    raise ValueError(f"pre-tokenizer {types} is neither ByteLevel alone nor a regex Split then ByteLevel")


def _merge_pair(merge: str | list[str]) -> tuple[bytes, bytes]:
    """One merge, written as "left right" (older tokenizers) or ["left", "right"] (newer)."""
    parts = merge.split(" ") if isinstance(merge, str) else merge
    if len(parts) != 2:
        raise ValueError(f"merge {merge!r} is not two tokens")
    return from_printable(parts[0]), from_printable(parts[1])


# ---------------------------------------------------------------------------------------------
# files


@contextmanager
def _atomic_dir(out: Path, overwrite: bool, source: Path) -> Iterator[Path]:
    """Yield an empty folder beside `out` that replaces `out` once the block succeeds.

    A failed or interrupted write leaves `out` as it was, never half written. A non-empty `out` is refused
    up front unless `overwrite` (then moved aside, replaced, and deleted: rename cannot replace a full folder),
    and never replaced when it holds `source`, the files being converted.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    full = out.is_dir() and any(out.iterdir())
    if full and not overwrite:
        raise ValueError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")
    if full and out.resolve() in (source.resolve(), *source.resolve().parents):
        raise ValueError(f"{out} holds {source}, the files being converted; write to another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # mkdir, not mkdtemp: the folder gets the usual permissions, not 0700
    try:
        yield tmp
        if full:
            old = out.rename(out.with_name(f".{out.name}.{secrets.token_hex(4)}.old"))
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)  # onto a missing or empty folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
