"""OPT's tokenizer: the real vocabulary, and BOS ('</s>', id 2) prepended exactly once."""

import hashlib

import pytest
from transformers import GPT2Tokenizer, GPT2TokenizerFast

from helpers.errors import ModelLoadError
from helpers.opt.tokenizer import TOKENIZER_DIR, encode_prompt, ensure_bos, opt_tokenizer

# From ../shared/opt-tokenizer/README.md (ids without and with OPT's BOS).
EXAMPLES = {
    "Natural language processing is a subfield of": [42968, 2777, 5774, 16, 10, 2849, 1399, 9],
    "Hello, my dog is cute": [31414, 6, 127, 2335, 16, 11962],
    "The quick brown fox jumps over the lazy dog.": [133, 2119, 6219, 23602, 13855, 81, 5, 22414, 2335, 4],
}


def test_shipped_files_are_the_shared_real_vocabulary(shared_tokenizer_dir):
    for name in ("vocab.json", "merges.txt"):
        shipped = hashlib.sha256((TOKENIZER_DIR / name).read_bytes()).hexdigest()
        assert shipped == hashlib.sha256((shared_tokenizer_dir / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("text, ids", EXAMPLES.items())
def test_real_vocabulary_gives_opt_ids_with_one_bos(shared_tokenizer_dir, text, ids):
    tokenizer = opt_tokenizer(shared_tokenizer_dir)
    assert tokenizer(text).input_ids == [2] + ids
    assert tokenizer.decode(tokenizer(text).input_ids, skip_special_tokens=True) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)) == (2, 2, 1, 50265)


def test_a_tokenizer_without_bos_like_the_seeds_gets_exactly_one(shared_tokenizer_dir):
    # The seed's bart-large GPT2Tokenizer added no BOS: the same vocabulary loaded plainly behaves like it.
    plain = GPT2TokenizerFast.from_pretrained(str(shared_tokenizer_dir), bos_token="</s>", eos_token="</s>",
                                              pad_token="<pad>", unk_token="<unk>")
    text = "Hello, my dog is cute"
    assert plain(text).input_ids == EXAMPLES[text]
    assert encode_prompt(plain, text) == [2] + EXAMPLES[text]
    fixed = ensure_bos(plain)
    assert fixed(text).input_ids == [2] + EXAMPLES[text]
    assert fixed.padding_side == "left" and fixed.model_max_length == 2048


def test_bos_is_not_doubled_by_a_tokenizer_that_adds_it_or_by_the_text(tokenizer):
    text = "Hello, my dog is cute"
    assert encode_prompt(tokenizer, text) == [2] + EXAMPLES[text]
    assert encode_prompt(tokenizer, "</s>" + text) == [2] + EXAMPLES[text]
    assert encode_prompt(tokenizer, "") == [2]


def test_saved_and_reloaded_tokenizer_still_adds_bos(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("Hello").input_ids == [2, 31414]


def test_batch_is_padded_on_the_left(tokenizer):
    batch = tokenizer(["Hello", "Hello, my dog is cute"], padding=True)
    assert batch.input_ids[0][:5] == [1] * 5 and batch.input_ids[0][-2:] == [2, 31414]
    assert batch.attention_mask[0][:5] == [0] * 5


def test_a_tokenizer_whose_bos_is_not_opts_is_refused(shared_tokenizer_dir):
    other = GPT2Tokenizer.from_pretrained(str(shared_tokenizer_dir), bos_token="<s>", eos_token="</s>")
    with pytest.raises(ModelLoadError, match="not an OPT tokenizer"):
        ensure_bos(other)
