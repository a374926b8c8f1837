"""SFT record formats, HH-RLHF parsing, packing and the masked SFT loss."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from scratchlm.alignment.chat import encode_example, with_chat_tokens
from scratchlm.alignment.data import hh_pair, load_hh_pairs, pack_examples, parse_hh_dialogue, sft_pair, split_holdout
from scratchlm.alignment.sft import epoch_rows, sft_loss
from scratchlm.eval.logprobs import response_logprobs
from scratchlm.optim import cross_entropy
from tests.eval.tiny import byte_tokenizer, tiny_model


def test_sft_pair_formats():
    assert sft_pair({"prompt": "p", "response": "r"}) == ("p", "r")
    assert sft_pair({"question": "q", "answer": "48/2 = <<48/2=24>>24\n#### 24"}) == ("q", "48/2 = 24\n#### 24")
    assert sft_pair({"instruction": "Sort", "input": "b a", "output": "a b"}) == ("Sort\n\nb a", "a b")
    seed = {"instruction": "Say hi", "instances": [{"input": "", "output": "hi"}]}
    assert sft_pair(seed) == ("Say hi", "hi")
    with pytest.raises(ValueError, match="unrecognized"):
        sft_pair({"text": "x"})


def test_hh_dialogue_split_into_shared_prompt_and_final_replies(tmp_path):
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to X?\n\nAssistant: Here is a safe way."
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to X?\n\nAssistant: Do the bad thing."
    assert parse_hh_dialogue(chosen)[:2] == [("user", "hi"), ("assistant", "hello")]
    pair = hh_pair({"chosen": chosen, "rejected": rejected})
    assert pair.prompt == [("user", "hi"), ("assistant", "hello"), ("user", "how to X?")]
    assert (pair.chosen, pair.rejected) == ("Here is a safe way.", "Do the bad thing.")
    assert hh_pair({"chosen": chosen, "rejected": chosen}) is None  # no preference
    assert hh_pair({"chosen": chosen, "rejected": "\n\nHuman: other\n\nAssistant: x"}) is None  # differs earlier
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"chosen": chosen, "rejected": rejected}) + "\n" + json.dumps({"chosen": chosen, "rejected": chosen}) + "\n")
    pairs, skipped = load_hh_pairs(path)
    assert len(pairs) == 1 and skipped == 1


def test_real_hh_file_mostly_parses(data_path):
    pairs, skipped = load_hh_pairs(data_path("alignment/hh_rlhf_harmless_base_test.jsonl.gz"), limit=300)
    assert len(pairs) > 250 and len(pairs) + skipped == 300
    assert all(p.prompt[-1][0] == "user" and p.chosen != p.rejected for p in pairs)


def _examples(n: int = 7):
    tok = with_chat_tokens(byte_tokenizer())
    return tok, [encode_example(tok, f"q{i}" * (i + 1), f"answer {i}") for i in range(n)]


def test_packing_keeps_whole_examples_in_order_with_their_masks():
    tok, examples = _examples()
    packed = pack_examples(examples, seq_len=63)
    assert packed.tokens.shape[1] == 64 and packed.truncated == 0
    stream = [(t, m) for row_t, row_m in zip(packed.tokens.tolist(), packed.mask.tolist(), strict=True)
              for t, m in zip(row_t, row_m, strict=True)]
    flat_ids = [t for ids, _ in examples for t in ids]
    kept = [t for t, _ in stream]
    # rows hold the examples in order, each whole, padding (mask False) only at row ends
    pos = 0
    for ids, mask in examples:
        start = kept.index(ids[0], pos)
        assert kept[start : start + len(ids)] == ids and [m for _, m in stream[start : start + len(ids)]] == mask
        pos = start + len(ids)
    assert sum(packed.mask.flatten().tolist()) == sum(m for _, mask in examples for m in mask)
    assert len(flat_ids) <= packed.tokens.numel()
    unpacked = pack_examples(examples, seq_len=63, pack=False)
    assert len(unpacked.tokens) == len(examples) and len(packed.tokens) < len(examples)
    cut = pack_examples(examples, seq_len=15)
    assert cut.truncated == sum(len(ids) > 16 for ids, _ in examples)


def test_masked_positions_do_not_contribute_to_the_sft_loss():
    tok, examples = _examples()
    packed = pack_examples(examples, seq_len=63)
    model = tiny_model(tok.vocab_size, seed=4)
    targets = packed.targets()
    loss = sft_loss(model, packed.tokens, targets)
    (grad,) = torch.autograd.grad(loss, model.embed.weight)

    # loss = mean NLL of response targets = -mean of response_logprobs over the mask
    logprobs, _ = response_logprobs(model, packed.tokens, packed.mask & (torch.arange(64) > 0))
    torch.testing.assert_close(loss, -logprobs.sum() / packed.mask[:, 1:].sum())

    # change every masked-out *target* (prompt and padding tokens that are never inputs to a response
    # prediction later in the row, i.e. the padding tail): loss and gradient stay the same
    scrambled = packed.tokens.clone()
    last_response = torch.tensor([max(i for i, m in enumerate(r) if m) for r in packed.mask.tolist()])  # (rows,)
    tail = torch.arange(64) > last_response[:, None]  # after a row's last response token
    scrambled[tail] = torch.randint(0, 256, (int(tail.sum()),))
    loss2 = sft_loss(model, scrambled, torch.where(packed.mask[:, 1:], scrambled[:, 1:], -100))
    (grad2,) = torch.autograd.grad(loss2, model.embed.weight)
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(grad2, grad)
    # no gradient reaches the logits of masked-out positions
    logits = model(packed.tokens[:, :-1]).detach().requires_grad_()
    cross_entropy(logits, targets).backward()
    assert (logits.grad[~packed.mask[:, 1:]] == 0).all() and (logits.grad[packed.mask[:, 1:]] != 0).any()
    # and a prompt-only batch gives 0, not NaN
    assert sft_loss(model, packed.tokens, torch.full_like(targets, -100)).item() == 0.0


def test_epoch_rows_is_a_seeded_permutation_per_epoch():
    rows = torch.cat([epoch_rows(10, 4, seed=3, index=i) for i in range(5)])  # 2 epochs
    assert sorted(rows[:10].tolist()) == list(range(10)) and sorted(rows[10:20].tolist()) == list(range(10))
    assert torch.equal(epoch_rows(10, 4, seed=3, index=2), rows[8:12])


def test_split_holdout():
    train, held = split_holdout(list(range(100)), 0.1, seed=0)
    assert len(held) == 10 and sorted(train + held) == list(range(100))
    assert split_holdout(list(range(100)), 0.1, seed=0) == (train, held)
