"""HF Llama export/import: transformers' own LlamaForCausalLM and tokenizer must compute what ours do.

Every check runs against transformers itself (the reference), not against our own reading of the files.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from scratchlm.cli.main import main
from scratchlm.config import to_dict
from scratchlm.export import (
    export_hf,
    from_hf_state_dict,
    import_hf,
    llama_config,
    model_config_from_llama,
    to_hf_state_dict,
    tokenizer_from_hf,
)
from scratchlm.model import ModelConfig, TransformerLM
from scratchlm.tokenizer import Tokenizer, train_bpe
from scratchlm.tokenizer.io import to_printable
from scratchlm.tokenizer.pretokenize import GPT2_PATTERN, GPT4_PATTERN
from scratchlm.train.checkpoint import load_trained_model, save_checkpoint
from scratchlm.train.config import TrainConfig

transformers = pytest.importorskip("transformers")

EOT = "<|endoftext|>"
TEXT = "Once upon a time, Lily's dog ran 123 miles!<|endoftext|>  The end.\n\nÜber naïve café 日本 🙂\t ok"
# transformers 4.56 renamed from_pretrained's torch_dtype to dtype (the old name now logs a deprecation)
DTYPE_KWARG = "dtype" if tuple(map(int, transformers.__version__.split(".")[:2])) >= (4, 56) else "torch_dtype"
SMALL = dict(context_length=32, d_model=64, n_layers=2, n_heads=4, d_ff=96)
CONFIGS = {  # vocab_size: "merges" = the 301-token tokenizer, "bytes" = 257 (256 bytes + <|endoftext|>, no merges)
    "untied-gqa-theta5e5": ("merges", dict(n_kv_heads=2, rope_theta=500_000.0)),
    "tied-mha-default-dff": ("merges", dict(tie_embeddings=True, d_ff=None)),
    "vocab257-tied-mqa": ("bytes", dict(n_kv_heads=1, rope_theta=1_000.0, tie_embeddings=True)),
}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, Tokenizer]:
    """Tiny trained tokenizers: one with merges, one of bytes only (an odd vocab size, 257)."""
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text((TEXT + " the quick brown fox jumps over the lazy dog. ") * 40, encoding="utf-8")
    merged = train_bpe(path, 301, [EOT], num_workers=1, progress=False)
    plain = train_bpe(path, 257, [EOT], num_workers=1, progress=False)
    return {"merges": Tokenizer(*merged, [EOT]), "bytes": Tokenizer(*plain, [EOT])}


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Perturb the norm weights too (initialised to ones): a swapped norm mapping would otherwise go unseen."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


def make_run(tmp_path, tokenizer: Tokenizer | None, **model_kwargs) -> tuple:
    """A run folder (checkpoint.pt + tokenizer/) holding a random model; returns (folder, model)."""
    vocab_size = tokenizer.vocab_size if tokenizer is not None else 257
    config = ModelConfig(vocab_size=vocab_size, **{**SMALL, **model_kwargs})
    torch.manual_seed(0)
    model = TransformerLM(config).eval()
    randomize(model)
    run = tmp_path / "run"
    if tokenizer is not None:
        tokenizer.save(run / "tokenizer")
    save_checkpoint(run / "checkpoint.pt", model=model, optimizer=None, step=7,
                    config=to_dict(TrainConfig(model=config)),
                    tokenizer_sha256=tokenizer.hash if tokenizer is not None else None)
    return run, model


def hf_model(path) -> torch.nn.Module:
    return transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager",
                                                         **{DTYPE_KWARG: torch.float32}).eval()


def max_logits_diff(ours: torch.nn.Module, theirs: torch.nn.Module, vocab_size: int) -> float:
    ids = torch.randint(0, vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(ids) - theirs(ids).logits).abs().max().item()


@pytest.fixture(params=list(CONFIGS))
def exported(request, tmp_path, tokenizers):
    """(run folder, our model, tokenizer, HF export folder) for each model shape in CONFIGS."""
    tok_name, kwargs = CONFIGS[request.param]
    run, model = make_run(tmp_path, tokenizers[tok_name], **kwargs)
    return run, model, tokenizers[tok_name], export_hf(run, tmp_path / "hf")


# ---------------------------------------------------------------------------------------------
# export


def test_transformers_computes_the_same_logits(exported):
    run, model, _, out = exported
    assert max_logits_diff(model, hf_model(out), model.config.vocab_size) <= 1e-4


def test_autotokenizer_encodes_like_ours(exported):
    _, model, tok, out = exported
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok.encode(TEXT) == tok.encode(TEXT)
    assert hf_tok.eos_token_id == tok.special_ids[EOT] == json.loads((out / "config.json").read_text())["eos_token_id"]
    assert hf_tok.model_max_length == model.config.context_length


def test_export_then_import_is_lossless(exported, tmp_path):
    run, model, tok, out = exported
    back = load_trained_model(import_hf(out, tmp_path / "back"))
    ours, theirs = model.state_dict(), back.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert llama_config(back.model.config) == llama_config(model.config)
    assert back.tokenizer.hash == tok.hash


def test_tied_export_writes_the_embedding_once(tmp_path, tokenizers):
    run, _ = make_run(tmp_path, tokenizers["bytes"], tie_embeddings=True)
    names = load_file(export_hf(run, tmp_path / "hf") / "model.safetensors")
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names


def test_bfloat16_export(tmp_path, tokenizers):
    run, model = make_run(tmp_path, tokenizers["merges"])
    out = export_hf(run, tmp_path / "hf", dtype=torch.bfloat16)
    weights = load_file(out / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    expected = to_hf_state_dict(model)
    assert all(torch.equal(weights[k], v.to(torch.bfloat16)) for k, v in expected.items())


def test_export_without_tokenizer(tmp_path):
    run, model = make_run(tmp_path, None)
    out = export_hf(run / "checkpoint.pt", tmp_path / "hf")
    assert not (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["eos_token_id"] is None
    assert max_logits_diff(model, hf_model(out), model.config.vocab_size) <= 1e-4


@pytest.mark.parametrize("kwargs, match", [(dict(qk_norm=True), "qk_norm"), (dict(sliding_window=8), "sliding_window")])
def test_what_llama_cannot_express_is_refused(tmp_path, tokenizers, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llama_config(ModelConfig(vocab_size=257, **SMALL, **kwargs))
    run, _ = make_run(tmp_path, tokenizers["bytes"], **kwargs)
    (tmp_path / "hf").mkdir()
    with pytest.raises(ValueError, match=match):
        export_hf(run, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no temporary folder left behind


def test_a_non_empty_folder_is_only_replaced_with_overwrite(tmp_path, tokenizers):
    run, _ = make_run(tmp_path, tokenizers["bytes"])
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        export_hf(run, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    export_hf(run, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    with pytest.raises(ValueError, match="being converted"):  # --out = the run itself would delete the run
        export_hf(run, run, overwrite=True)
    with pytest.raises(ValueError, match="being converted"):
        import_hf(out, tmp_path, overwrite=True)
    assert (run / "checkpoint.pt").is_file() and (out / "model.safetensors").is_file()


def test_weights_that_do_not_fit_name_the_tensor():
    config = ModelConfig(vocab_size=257, **SMALL, n_kv_heads=2)
    hf_sd = to_hf_state_dict(TransformerLM(config))
    with pytest.raises(ValueError, match=r"missing \['model.norm.weight'\]"):
        from_hf_state_dict({k: v for k, v in hf_sd.items() if k != "model.norm.weight"}, config)
    with pytest.raises(ValueError, match=r"layers.0.self_attn.k_proj.weight has shape \(32, 64\), the config needs"):
        from_hf_state_dict(hf_sd, ModelConfig(vocab_size=257, **SMALL, n_kv_heads=4))


# ---------------------------------------------------------------------------------------------
# import of folders written by transformers itself


def save_hf_native(path, vocab_size: int) -> torch.nn.Module:
    """A random LlamaForCausalLM saved by transformers, in shards (exercises the index file)."""
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, rope_theta=20_000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    randomize(model)
    model.save_pretrained(path, max_shard_size="40KB")
    return model


def save_hf_tokenizer(path, tok: Tokenizer, pre_tokenizer=None) -> None:
    """tokenizer.json written by `tokenizers` itself; by default GPT-2's layout (ByteLevel with its built-in regex)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    special = {i: s for s, i in tok.special_ids.items()}  # in the vocab as text, as in GPT-2's own file
    vocab = {special.get(i) or to_printable(b): i for i, b in tok.vocab.items()}
    hf = HFTokenizer(models.BPE(vocab, [(to_printable(a), to_printable(b)) for a, b in tok.merges]))
    hf.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken(EOT, special=True)])
    hf.save(str(path / "tokenizer.json"))


def llama3_pretokenizer():
    """Llama 3's layout: Split on a GPT-4 style regex, keeping the gaps ("isolated"), then ByteLevel without regex."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


@pytest.mark.parametrize("layout, pattern", [("gpt2", GPT2_PATTERN), ("llama3", GPT4_PATTERN)])
def test_tokenizer_from_hf_reads_byte_level_layouts(tmp_path, tokenizers, layout, pattern):
    tok = tokenizers["merges"]
    save_hf_tokenizer(tmp_path, tok, llama3_pretokenizer() if layout == "llama3" else None)
    ours = tokenizer_from_hf(json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8")))
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert ours.pattern == pattern
    assert ours.encode(TEXT) == hf_tok.encode(TEXT)
    assert (ours.vocab, ours.merges, ours.special_ids) == (tok.vocab, tok.merges, tok.special_ids)


def test_import_of_a_transformers_saved_model(tmp_path, tokenizers):
    tok = tokenizers["merges"]
    theirs = save_hf_native(tmp_path / "hf", tok.vocab_size)
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    save_hf_tokenizer(tmp_path / "hf", tok)
    back = load_trained_model(import_hf(tmp_path / "hf", tmp_path / "run"))
    assert back.model.config.rope_theta == 20_000.0 and back.model.config.n_kv_heads == 2
    assert max_logits_diff(back.model, theirs, tok.vocab_size) <= 1e-4
    assert back.tokenizer.hash == tok.hash  # GPT-2 layout: our tokenizer (GPT-2 pattern) exactly


def test_a_non_bpe_tokenizer_imports_the_model_only(tmp_path, caplog):
    save_hf_native(tmp_path / "hf", 300)
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    HFTokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "hf" / "tokenizer.json"))
    with caplog.at_level(logging.WARNING, logger="scratchlm.export.hf_llama"):
        run = import_hf(tmp_path / "hf", tmp_path / "run")
    assert "not BPE" in caplog.text and "without a tokenizer" in caplog.text
    assert (run / "checkpoint.pt").is_file() and not (run / "tokenizer").exists()
    assert load_trained_model(run).tokenizer is None


BASE = dict(model_type="llama", vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4)


@pytest.mark.parametrize("extra, match", [
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "llama3"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "yarn"),
    (dict(head_dim=32), "head_dim"),
    (dict(model_type="mistral"), "mistral"),
])
def test_unsupported_hf_configs_are_refused(extra, match):
    with pytest.raises(ValueError, match=match):
        model_config_from_llama({**BASE, **extra})


def test_hf_rope_theta_in_either_form():
    assert model_config_from_llama({**BASE, "rope_theta": 5e5}).rope_theta == 5e5
    rope = {"rope_type": "default", "rope_theta": 7e4}
    assert model_config_from_llama({**BASE, "rope_parameters": rope}).rope_theta == 7e4


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_round_trip(tmp_path, tokenizers, capsys):
    run, _ = make_run(tmp_path, tokenizers["bytes"])
    hf_dir, back = tmp_path / "hf", tmp_path / "back"
    assert main(["export", "hf", "--checkpoint", str(run), "--out", str(hf_dir), "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.startswith(f"exported {run} -> {hf_dir}")
    assert main(["export", "hf", "--checkpoint", str(run), "--out", str(hf_dir)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", "from-hf", "--hf-dir", str(hf_dir), "--out", str(back)]) == 0
    assert capsys.readouterr().out.startswith(f"imported {hf_dir} -> {back / 'checkpoint.pt'} (with tokenizer)")
    assert main(["export", "from-hf", "--hf-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
