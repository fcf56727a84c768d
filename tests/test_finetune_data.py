"""Text to fine-tune on: every kind of source, OPT's start token once per document, packing, the seeded split, and
each bad input's message (checked against OPT's real tokenizer from the shared folder)."""

import json

import pytest
import torch

from helpers.errors import HelpersError, TrainingDataError
from helpers.finetune.data import SAMPLE_TEXT, TrainingData, pack, prepare_data, split_blocks

BOS = 2
POEM = "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate."
NOTE = "Rough winds do shake the darling buds of May, and summer's lease hath all too short a date."


@pytest.fixture(scope="module")
def opt(shared_tokenizer_dir):
    from helpers.opt.tokenizer import opt_tokenizer

    return opt_tokenizer(shared_tokenizer_dir)


def own_ids(tokenizer, texts: list[str]) -> list[int]:
    """What OPT's tokenizer makes of each document on its own (`</s>` first), one after another."""
    ids = []
    for text in texts:
        encoded = tokenizer(text).input_ids
        assert encoded[0] == BOS and encoded[1] != BOS
        ids += encoded
    return ids


def packed_ids(data: TrainingData) -> list[int]:
    """The blocks back in the text's order (the split keeps each part's order; rebuilt from both parts)."""
    return torch.cat([data.train, data.held_out]).flatten().tolist()


def check_stream(data: TrainingData, tokenizer, texts: list[str]) -> None:
    expected = own_ids(tokenizer, texts)
    assert data.tokens == len(expected) // data.seq_len * data.seq_len
    assert sorted(packed_ids(data)) == sorted(expected[: data.tokens])
    whole = torch.tensor(expected[: data.tokens]).view(-1, data.seq_len)
    rows = {tuple(row) for row in whole.tolist()}
    assert {tuple(row) for row in torch.cat([data.train, data.held_out]).tolist()} == rows


def test_the_error_is_a_helpers_error_and_a_value_error():
    assert issubclass(TrainingDataError, HelpersError) and issubclass(TrainingDataError, ValueError)


def test_a_text_file_is_one_document_starting_with_one_bos(opt, tmp_path):
    text = (POEM + "\n") * 30
    (tmp_path / "poem.txt").write_text(text)
    data = prepare_data(tmp_path / "poem.txt", opt, seq_len=16)
    check_stream(data, opt, [text])
    assert data.documents == 1 and data.source == "poem.txt (1 document)"
    assert data.train.dtype == torch.int64 and data.train.shape[1] == 16
    assert (torch.cat([data.train, data.held_out]) == BOS).sum() == 1


def test_a_text_starting_with_the_bos_text_keeps_one_bos(opt):
    data = prepare_data(["</s>" + POEM * 4, NOTE * 4], opt, seq_len=8)
    assert (torch.cat([data.train, data.held_out]) == BOS).sum() == 2  # one per document, never doubled


def test_a_jsonl_file_is_one_document_per_line_with_its_text_field(opt, tmp_path):
    lines = [{"text": POEM, "id": 1}, {"text": NOTE}, {"text": "   "}, {"text": POEM + " " + NOTE}]
    path = tmp_path / "notes.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    data = prepare_data(path, opt, seq_len=8)
    texts = [POEM, NOTE, POEM + " " + NOTE]  # the blank one is skipped
    check_stream(data, opt, texts)
    assert data.documents == 3 and data.source == "notes.jsonl (3 documents)"


def test_a_jsonl_file_with_another_text_column(opt, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({"body": t, "text": 3}) for t in [POEM, NOTE]))
    data = prepare_data(path, opt, seq_len=8, text_column="body")
    check_stream(data, opt, [POEM, NOTE])


def test_a_folder_reads_its_text_files_recursively_in_sorted_order(opt, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.md").write_text(NOTE)
    (tmp_path / "a.txt").write_text(POEM)
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": POEM + NOTE}) + "\n" + json.dumps({"text": NOTE}))
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4\x00\x01")  # not a text suffix: not read
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("hidden " * 100)
    data = prepare_data(tmp_path, opt, seq_len=8)
    check_stream(data, opt, [POEM, NOTE, POEM + NOTE, NOTE])  # a.txt, b/2.md, c.jsonl (two lines)
    assert data.documents == 4 and data.source.endswith("(4 files, 4 documents)")


def test_a_list_of_strings(opt):
    data = prepare_data([POEM, "", NOTE], opt, seq_len=8)
    check_stream(data, opt, [POEM, NOTE])
    assert data.source == "2 texts given"


def test_a_hub_data_set_uses_its_first_text_column_or_the_one_named(opt, monkeypatch):
    datasets = pytest.importorskip("datasets")
    loaded = datasets.DatasetDict({
        "validation": datasets.Dataset.from_dict({"label": [0], "quote": ["not this split"], "note": ["x"]}),
        "train": datasets.Dataset.from_dict({"label": [0, 1], "quote": [POEM, NOTE], "note": [NOTE, NOTE]}),
    })
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, *a, **k: asked.append(name) or loaded)
    data = prepare_data("someone/quotes", opt, seq_len=8)
    check_stream(data, opt, [POEM, NOTE])
    assert asked == ["someone/quotes"] and data.source == "hub: someone/quotes [quote] (2 documents)"
    check_stream(prepare_data("someone/quotes", opt, seq_len=8, text_column="note"), opt, [NOTE, NOTE])


def test_packing_drops_the_remainder_and_the_split_holds_out_a_tenth():
    ids = torch.arange(1005)
    blocks = pack(ids, 10)
    assert blocks.shape == (100, 10) and blocks[-1, -1] == 999
    train, held = split_blocks(blocks, 0.1, seed=0)
    assert len(train) == 90 and len(held) == 10
    assert sorted(torch.cat([train, held])[:, 0].tolist()) == list(range(0, 1000, 10))  # every block once
    assert train[:, 0].tolist() == sorted(train[:, 0].tolist())  # each part in the text's order


@pytest.mark.parametrize("n_blocks, fraction, held", [(2, 0.1, 1), (2, 0.9, 1), (3, 0.5, 2), (11, 0.1, 1), (25, 0.1, 2)])
def test_at_least_one_block_each_side(n_blocks, fraction, held):
    train, held_out = split_blocks(torch.arange(n_blocks * 4).view(n_blocks, 4), fraction, seed=3)
    assert len(held_out) == held and len(train) == n_blocks - held


def test_the_seeded_split_is_deterministic_and_another_seed_draws_another(opt):
    text = [f"{NOTE} {i}" for i in range(40)]
    first, again, other = (prepare_data(text, opt, seq_len=8, seed=s) for s in (0, 0, 1))
    assert torch.equal(first.train, again.train) and torch.equal(first.held_out, again.held_out)
    assert not torch.equal(first.held_out, other.held_out)
    assert len(first.held_out) == round((len(first.train) + len(first.held_out)) * 0.1)


def test_the_shipped_sample_is_public_domain_text_of_a_few_hundred_kb(opt):
    assert SAMPLE_TEXT.is_file() and 50_000 < SAMPLE_TEXT.stat().st_size < 400_000
    readme = (SAMPLE_TEXT.parent / "README.md").read_text()
    assert SAMPLE_TEXT.name in readme and "public domain" in readme
    data = prepare_data(SAMPLE_TEXT, opt, seq_len=512)
    assert data.documents == 1 and len(data.held_out) >= 5 and len(data.train) >= 60
    first = next(block for block in torch.cat([data.train, data.held_out]) if block[0] == BOS)  # the text's start
    assert opt.decode(first[:6]) == "</s>\tAS YOU LIKE IT"
    assert data.describe().startswith("as_you_like_it.txt (1 document): ") and "held out" in data.describe()


def _message(source, opt, **kw) -> str:
    with pytest.raises(TrainingDataError) as caught:
        prepare_data(source, opt, **kw)
    return str(caught.value)


def test_a_missing_path(opt, tmp_path):
    said = _message(str(tmp_path / "nope.txt"), opt)
    assert "There is no file or folder at" in said and "nope.txt" in said and "mount Drive" in said
    assert "no file or folder" in _message("notes/my.txt", opt)  # a relative path, not a hub id
    assert "There is no file or folder at" in _message(tmp_path / "notes", opt)  # a Path is never a hub id


def test_an_empty_file_and_an_empty_folder(opt, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\n")
    assert "empty.txt is empty" in _message(tmp_path / "empty.txt", opt)
    (tmp_path / "folder").mkdir()
    assert "No text files in the folder" in _message(tmp_path / "folder", opt) and "it is empty" in _message(
        tmp_path / "folder", opt)
    (tmp_path / "folder" / "a.txt").write_text("")
    assert "Every text file in the folder" in _message(tmp_path / "folder", opt)


def test_a_folder_without_text_files_says_what_it_holds(opt, tmp_path):
    for name in ("a.pdf", "b.docx"):
        (tmp_path / name).write_bytes(b"x")
    said = _message(tmp_path, opt)
    assert "No text files" in said and "2 other files (a.pdf, b.docx)" in said and ".txt, .md" in said


def test_a_binary_file_says_where_the_nul_byte_is(opt, tmp_path):
    (tmp_path / "thesis.txt").write_bytes(b"%PDF-1.7 text" + b"\x00" * 4)
    said = _message(tmp_path / "thesis.txt", opt)
    assert "thesis.txt is not a text file" in said and "byte offset 13" in said and "plain text" in said


def test_a_non_utf8_file_says_the_byte_offset_and_how_to_re_save(opt, tmp_path):
    (tmp_path / "latin.txt").write_bytes("Le café est très bon. ".encode("latin-1") * 3)
    said = _message(tmp_path / "latin.txt", opt)
    assert "latin.txt is not UTF-8 text" in said and "0xe9 at byte offset 6" in said and "Re-save it as UTF-8" in said


def test_a_utf8_byte_order_mark_is_dropped(opt, tmp_path):
    (tmp_path / "bom.txt").write_bytes("\ufeff".encode() + (POEM * 4).encode())
    check_stream(prepare_data(tmp_path / "bom.txt", opt, seq_len=8), opt, [POEM * 4])


@pytest.mark.parametrize("lines, says", [
    (['{"text": "fine"}', '{"text": "broken'], "notes.jsonl, line 2 is not JSON"),
    (['{"text": "fine"}', "", '{"body": "x"}'], 'notes.jsonl, line 3 has no "text" field (its fields are body)'),
    (['["a list"]'], "line 1 has no \"text\" field (it is a JSON list, not an object)"),
    (['{"text": 42}'], 'notes.jsonl, line 1: "text" is a int, not text'),
])
def test_a_bad_jsonl_line_is_named_by_its_number(opt, tmp_path, lines, says):
    (tmp_path / "notes.jsonl").write_text("\n".join(lines))
    said = _message(tmp_path / "notes.jsonl", opt)
    assert says in said and ("text_column" in said or "JSON object" in said)


def test_text_shorter_than_one_block_and_than_two(opt):
    ids = len(opt(POEM).input_ids)
    said = _message([POEM], opt, seq_len=ids + 1)
    assert f"is {ids} tokens long: shorter than one block of {ids + 1} tokens" in said
    assert f"Use seq_len={ids // 2} or less, or add more text (at least {2 * (ids + 1)} tokens" in said
    said = _message([POEM], opt, seq_len=ids - 1)
    assert "only one block" in said and "one held out" in said


def test_settings_out_of_range(opt):
    assert "from 2 to 2048" in _message([POEM], opt, seq_len=4096)
    assert "from 2 to 2048" in _message([POEM], opt, seq_len=0)
    assert "held_out_fraction must be between 0 and 1" in _message([POEM], opt, held_out_fraction=1.0)
    assert "list of strings" in _message(42, opt) and "list of texts is empty" in _message(["", " "], opt)


def test_a_hub_data_set_without_a_text_column_lists_its_columns(opt, monkeypatch):
    datasets = pytest.importorskip("datasets")
    numbers = datasets.Dataset.from_dict({"label": [0, 1], "score": [0.5, 0.1]})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict({"train": numbers}))
    said = _message("someone/numbers", opt)
    assert "'someone/numbers' has no text column" in said and "label (" in said and "score (" in said
    assert "text_column" in said
    said = _message("someone/numbers", opt, text_column="body")
    assert "has no column 'body'" in said and "label (" in said
    assert "is not text" in _message("someone/numbers", opt, text_column="label")


def test_a_hub_data_set_out_of_reach_offline(opt, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # datasets' own offline refusal, not a stand-in
    said = _message("someone/not-cached-here", opt)
    assert "Could not get the data set 'someone/not-cached-here'" in said and "HF_HUB_OFFLINE is set" in said
    assert "not in the local cache" in said and "no file or folder named" in said
