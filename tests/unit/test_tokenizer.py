"""load_tokenizer: SentencePiece and HF tokenizer.json give AutoTokenizer's ids on the whole bundled
sample, and frame a document with the tokenizer's own BOS/EOS."""

import json
import shutil

import pytest

from rethinktiny.errors import UserError
from rethinktiny.tokenizer import HUGGINGFACE, SENTENCEPIECE, find_tokenizer, load_tokenizer
from tests.conftest import SAMPLE_TRAIN, SAMPLE_VALID
from tests.unit.hf_tokenizer_helpers import write_hf_folder

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def sample_texts():
    """Every document of data/sample/*.jsonl."""
    return [json.loads(line)["text"] for path in (SAMPLE_TRAIN, SAMPLE_VALID)
            for line in open(path, encoding="utf-8") if line.strip()]


def _auto(folder):
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _mismatches(expected, got):
    return [i for i, (a, b) in enumerate(zip(expected, got)) if a != b]


@pytest.fixture(scope="module")
def sp_export(tmp_path_factory, tiny_tokenizer):
    """The SentencePiece fixture exported for Hugging Face (the `convert to-hf` path), with <s>."""
    from rethinktiny.vocab.hf_tokenizer import write_hf_tokenizer

    folder = tmp_path_factory.mktemp("sp_export")
    write_hf_tokenizer(tiny_tokenizer, folder, add_bos_token=True)
    return folder


def test_sentencepiece_ids_equal_auto_tokenizer_on_sample(tiny_tokenizer, sp_export, sample_texts):
    import sentencepiece as spm

    tok = load_tokenizer(tiny_tokenizer)
    assert tok.kind == SENTENCEPIECE and tok.path == tiny_tokenizer
    ids = tok.encode_batch(sample_texts)
    assert ids == spm.SentencePieceProcessor(model_file=str(tiny_tokenizer)).encode(sample_texts)
    auto = _auto(sp_export)
    assert _mismatches(auto(sample_texts, add_special_tokens=False)["input_ids"], ids) == []
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id) == (len(auto), auto.bos_token_id,
                                                                   auto.eos_token_id, auto.unk_token_id) == (2000, 1, 2, 0)
    assert tok.pad_id is None
    # The framing: AutoTokenizer's own (<s> with add_bos_token) plus the end of the document.
    framed = auto(sample_texts[:200])["input_ids"]
    assert [tok.frame(x) for x in ids[:200]] == [x + [2] for x in framed]
    assert tok.frame(ids[0]) == [1] + ids[0] + [2]
    assert tok.encode(sample_texts[0]) == ids[0]


def test_exported_tokenizer_json_read_as_huggingface_equals_sentencepiece(tiny_tokenizer, sp_export, sample_texts):
    only_json = sp_export.parent / "sp_export_json_only"
    shutil.copytree(sp_export, only_json)
    (only_json / "tokenizer.model").unlink()
    hf = load_tokenizer(only_json)
    assert hf.kind == HUGGINGFACE and hf.path == only_json / "tokenizer.json"
    sp = load_tokenizer(tiny_tokenizer)
    assert _mismatches(sp.encode_batch(sample_texts), hf.encode_batch(sample_texts)) == []
    assert (hf.vocab_size, hf.bos_id, hf.eos_id, hf.unk_id) == (sp.vocab_size, sp.bos_id, sp.eos_id, sp.unk_id)
    # Exported with <s> in its post-processor: the same document as SentencePiece's rule.
    assert hf.frame([7, 8]) == sp.frame([7, 8]) == [1, 7, 8, 2]
    # A folder with both files is read with SentencePiece (the file the HF one came from).
    assert load_tokenizer(sp_export).kind == SENTENCEPIECE


def test_byte_level_bpe_ids_equal_auto_tokenizer_on_sample(hf_bpe_tokenizer, sample_texts):
    tok = load_tokenizer(hf_bpe_tokenizer)
    auto = _auto(hf_bpe_tokenizer)
    ids = tok.encode_batch(sample_texts)
    assert _mismatches(auto(sample_texts, add_special_tokens=False)["input_ids"], ids) == []
    assert tok.kind == HUGGINGFACE and tok.vocab_size == len(auto) == 1500
    assert (tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id) == (auto.bos_token_id, auto.eos_token_id,
                                                                auto.unk_token_id, None) == (0, 0, 0, None)
    # Byte-level BPE is lossless: decode gives every document back.
    assert [tok.decode(x) for x in ids] == sample_texts
    assert tok.decode(ids[3]) == auto.decode(ids[3])
    # SmolLM2's layout: AutoTokenizer adds nothing, so a document is ids <|endoftext|>.
    assert auto(sample_texts[:200])["input_ids"] == ids[:200]
    assert tok.frame(ids[0]) == ids[0] + [0]
    assert tok.frame(ids[0], eos=False) == ids[0]
    # The tokenizer.json file itself is accepted too.
    assert load_tokenizer(hf_bpe_tokenizer / "tokenizer.json").encode(sample_texts[5]) == ids[5]


@pytest.mark.parametrize("config, template, prefix, suffix", [
    ({}, "<|im_start|> $A <|im_end|>", [1], [2]),
    ({}, "<|im_start|> $A", [1], []),
    ({}, "$A <|im_end|>", [], [2]),
    ({}, None, [], []),
    # transformers 5 ignores these flags next to a tokenizer.json: the post-processor decides.
    ({"add_bos_token": True, "add_eos_token": True}, None, [], []),
    ({"add_bos_token": False}, "<|im_start|> $A <|im_end|>", [1], [2]),
])
def test_framing_follows_auto_tokenizer(tmp_path, hf_bpe_tokenizer, sample_texts, config, template, prefix, suffix):
    """Distinct BOS/EOS (<|im_start|> 1, <|im_end|> 2): the prefix/suffix is what AutoTokenizer adds,
    which is tokenizer.json's post-processor."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import processors

    backend = FastTokenizer.from_file(str(hf_bpe_tokenizer / "tokenizer.json"))
    if template is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<|im_start|>", 1), ("<|im_end|>", 2)])
    folder = write_hf_folder(backend, tmp_path / "tok", bos_token="<|im_start|>", eos_token="<|im_end|>", **config)
    tok, auto = load_tokenizer(folder), _auto(folder)
    assert (tok.prefix, tok.suffix, tok.bos_id, tok.eos_id) == (prefix, suffix, 1, 2)
    texts = sample_texts[:100]
    ids = tok.encode_batch(texts)
    assert auto(texts, add_special_tokens=False)["input_ids"] == ids
    assert auto(texts)["input_ids"] == [prefix + x + suffix for x in ids]
    assert [tok.frame(x) for x in ids] == [prefix + x + [2] for x in ids]
    assert tok.frame(ids[0], bos=False, eos=False) == ids[0]


def test_special_tokens_from_special_tokens_map_and_dict_form(tmp_path, hf_bpe_tokenizer):
    folder = tmp_path / "tok"
    folder.mkdir()
    shutil.copy(hf_bpe_tokenizer / "tokenizer.json", folder)
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|im_start|>", "lstrip": False}, "eos_token": "<|im_end|>",
         "pad_token": "<|endoftext|>", "unk_token": "<|not_in_vocab|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    tok = load_tokenizer(folder)
    # tokenizer_config.json wins over special_tokens_map.json; a token outside the vocab is absent.
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 0, 0, None)


def test_find_tokenizer(tmp_path, tiny_tokenizer, hf_bpe_tokenizer):
    assert find_tokenizer(tmp_path, hf_bpe_tokenizer, tiny_tokenizer.parent) == hf_bpe_tokenizer
    assert find_tokenizer(tiny_tokenizer.parent) == tiny_tokenizer.parent
    assert find_tokenizer(tmp_path) is None


def test_check_fits(tiny_tokenizer, hf_bpe_tokenizer):
    load_tokenizer(tiny_tokenizer).check_fits(2000)
    load_tokenizer(hf_bpe_tokenizer).check_fits(1536)  # HF models often pad the embedding
    with pytest.raises(UserError, match=r"tokenizer.model: tokenizer has 2000 pieces but the model's vocab_size is 2048"):
        load_tokenizer(tiny_tokenizer).check_fits(2048)
    with pytest.raises(UserError, match=r"tokenizer.json: tokenizer has 1500 tokens but the model's vocab_size is 1000"):
        load_tokenizer(hf_bpe_tokenizer).check_fits(1000)


def test_bad_inputs_are_one_line_errors_naming_the_path(tmp_path, hf_bpe_tokenizer):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "vocab.txt").write_text("a\n")
    with pytest.raises(UserError, match=rf"^{empty}: no tokenizer.model or tokenizer.json in this folder"):
        load_tokenizer(empty)
    with pytest.raises(UserError, match=rf"^{tmp_path / 'missing.model'}: tokenizer file not found"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "bad.model").write_bytes(b"\x08\x96\x01 not a model")
    with pytest.raises(UserError, match="bad.model: not a SentencePiece model"):
        load_tokenizer(tmp_path / "bad.model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserError, match="broken/tokenizer.json: not a Hugging Face tokenizer.json"):
        load_tokenizer(broken)
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    shutil.copy(hf_bpe_tokenizer / "tokenizer.json", bad_config)
    (bad_config / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(UserError, match="bad_config/tokenizer_config.json: not valid JSON"):
        load_tokenizer(bad_config)
    for err_path in (empty, tmp_path / "missing.model"):
        with pytest.raises(UserError) as err:
            load_tokenizer(err_path)
        assert "\n" not in str(err.value)
