"""Every command that takes a tokenizer accepts an HF tokenizer.json folder (a byte-level BPE in
SmolLM2's layout, trained here with `tokenizers`): data tokenize, eval ppl (HF folder and InternEvo
checkpoint), convert to-hf, inherit calibration; bad input is a one-line error with exit status 2."""

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from rethinktiny.checkpoint import save_model_only
from rethinktiny.cli import main
from rethinktiny.config import ModelConfig
from rethinktiny.data.prepare import tokenize_corpus
from rethinktiny.data.tokenized import iter_documents
from rethinktiny.errors import UserError
from rethinktiny.evaluate import evaluate_perplexity
from rethinktiny.inherit.calib import calibration_batches
from rethinktiny.model import PanGuPi
from tests.conftest import SAMPLE_VALID

transformers = pytest.importorskip("transformers")
DOCS = 12
BPE_IDS = 1500


def _texts(n=None):
    return [json.loads(line)["text"] for line in open(SAMPLE_VALID, encoding="utf-8")][:n]


@pytest.fixture(scope="module")
def auto(hf_bpe_tokenizer):
    return transformers.AutoTokenizer.from_pretrained(str(hf_bpe_tokenizer), local_files_only=True)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    path = tmp_path_factory.mktemp("held") / "valid.jsonl"
    lines = open(SAMPLE_VALID, encoding="utf-8").readlines()[:DOCS]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def _one_line_exit_2(argv, capsys, *fragments):
    assert main(argv) == 2
    # the error is the last line (libraries may draw progress bars before it)
    err = capsys.readouterr().err.strip().replace("\r", "\n").splitlines()[-1]
    assert err.startswith("error: "), err
    for fragment in fragments:
        assert fragment in err, err


def test_data_tokenize_with_hf_folder_writes_auto_tokenizer_ids(tmp_path, hf_bpe_tokenizer, auto, capsys):
    dst = tmp_path / "data"
    assert main(["data", "tokenize", "--input", str(SAMPLE_VALID), "--tokenizer", str(hf_bpe_tokenizer),
                 "--dst", str(dst), "--type-key", ""]) == 0
    written = list(iter_documents(next((dst / "default").glob("*.bin"))))
    texts = _texts()
    expected = auto(texts, add_special_tokens=False)["input_ids"]
    # SmolLM2's framing: AutoTokenizer adds nothing, the document ends with <|endoftext|> (id 0).
    assert written == [ids + [0] for ids in expected]
    summary = json.loads((dst / "summary.json").read_text())
    assert summary["vocab_size"] == BPE_IDS
    assert summary["tokenizer"] == {"kind": "huggingface", "bos_id": 0, "eos_id": 0}
    assert summary["tokens"] == sum(map(len, written))
    manifest = json.loads((dst / "manifest.json").read_text())
    assert manifest["inputs"]["tokenizer"]["path"].endswith("tokenizer.json")
    tokenize_corpus(SAMPLE_VALID, hf_bpe_tokenizer, tmp_path / "bare", type_key=None, add_eos=False)
    assert list(iter_documents(next((tmp_path / "bare" / "default").glob("*.bin")))) == expected


def test_data_tokenize_bad_tokenizer_folder_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(["data", "tokenize", "--input", str(SAMPLE_VALID), "--tokenizer", str(tmp_path / "empty"),
                      "--dst", str(tmp_path / "out")], capsys,
                     f"{tmp_path / 'empty'}: no tokenizer.model or tokenizer.json")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def bpe_models(tmp_path_factory, hf_bpe_tokenizer):
    """A random tiny model in the BPE vocabulary as an InternEvo checkpoint, and its `convert to-hf`
    export given the HF tokenizer folder."""
    from rethinktiny.convert.export import to_hf

    root = tmp_path_factory.mktemp("bpe_models")
    cfg = ModelConfig(hidden_size=48, num_layers=2, num_attention_heads=4, num_kv_heads=2, intermediate_size=96,
                      vocab_size=BPE_IDS)
    torch.manual_seed(0)
    model = PanGuPi(cfg).eval()
    save_model_only(root / "ckpt" / "10", model.state_dict(), cfg)
    to_hf(root / "ckpt", root / "hf", tokenizer=hf_bpe_tokenizer, max_position_embeddings=2048, progress=False)
    return {"root": root, "cfg": cfg, "model": model}


def test_convert_to_hf_copies_the_hf_tokenizer_files(bpe_models, hf_bpe_tokenizer, auto):
    hf = bpe_models["root"] / "hf"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (hf / name).read_bytes() == (hf_bpe_tokenizer / name).read_bytes()
    assert not (hf / "tokenizer.model").exists()
    config = json.loads((hf / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["vocab_size"]) == (0, 0, BPE_IDS)
    exported = transformers.AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    texts = _texts(50)
    assert exported(texts)["input_ids"] == auto(texts)["input_ids"]


def test_eval_ppl_hf_folder_and_checkpoint_with_hf_tokenizer(bpe_models, hf_bpe_tokenizer, held_out, auto):
    root = bpe_models["root"]
    ours = evaluate_perplexity(root / "ckpt", held_out, tokenizer=hf_bpe_tokenizer, seq_len=64, progress=False)
    hf = evaluate_perplexity(root / "hf", held_out, seq_len=64, progress=False)  # its own tokenizer.json
    assert (ours.form, hf.form) == ("internevo", "huggingface")
    assert ours.tokens == hf.tokens and hf.loss == pytest.approx(ours.loss, rel=1e-5)
    # The scoring rule, computed directly: <|endoftext|> as context, AutoTokenizer's ids, <|endoftext|>.
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in auto(_texts(DOCS), add_special_tokens=False)["input_ids"]:
            doc = torch.tensor([[0] + ids + [0]])
            total += F.cross_entropy(bpe_models["model"](doc[:, :-1])[0], doc[0, 1:], reduction="sum").item()
            count += doc.shape[1] - 1
    whole = evaluate_perplexity(root / "ckpt", held_out, tokenizer=hf_bpe_tokenizer, seq_len=4096, progress=False)
    assert whole.tokens == ours.tokens == count
    assert whole.loss == pytest.approx(total / count, rel=1e-5)
    assert math.isfinite(whole.perplexity)


def test_eval_ppl_finds_the_hf_tokenizer_next_to_a_checkpoint(bpe_models, hf_bpe_tokenizer, held_out, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(bpe_models["root"] / "ckpt", ckpt)
    shutil.copy(hf_bpe_tokenizer / "tokenizer.json", ckpt / "10")
    shutil.copy(hf_bpe_tokenizer / "tokenizer_config.json", ckpt / "10")
    found = evaluate_perplexity(ckpt, held_out, max_documents=3, progress=False)
    given = evaluate_perplexity(bpe_models["root"] / "ckpt", held_out, tokenizer=hf_bpe_tokenizer, max_documents=3,
                                progress=False)
    assert found.loss == pytest.approx(given.loss, rel=1e-6)


def test_eval_ppl_bad_tokenizers(bpe_models, hf_bpe_tokenizer, held_out, tiny_tokenizer, tmp_path, capsys):
    root = bpe_models["root"]
    with pytest.raises(UserError, match=r"ckpt: no tokenizer.model or tokenizer.json next to the model; pass "):
        evaluate_perplexity(root / "ckpt", held_out, progress=False)
    # a 2,000-piece SentencePiece model cannot index a 1,500-row embedding
    with pytest.raises(UserError, match=r"tokenizer has 2000 pieces but the model's vocab_size is 1500"):
        evaluate_perplexity(root / "hf", held_out, tokenizer=tiny_tokenizer, progress=False)
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(["eval", "ppl", "--model", str(root / "hf"), "--data", str(held_out), "--tokenizer",
                      str(tmp_path / "empty")], capsys, f"{tmp_path / 'empty'}: no tokenizer.model or tokenizer.json")


def test_convert_to_hf_bad_tokenizer_exits_2(bpe_models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _one_line_exit_2(["convert", "to-hf", "--src", str(bpe_models["root"] / "ckpt"), "--dst", str(tmp_path / "out"),
                      "--tokenizer", str(tmp_path / "empty"), "--max-position-embeddings", "2048"], capsys,
                     f"{tmp_path / 'empty'}: no tokenizer.model or tokenizer.json")
    assert not (tmp_path / "out").exists()


def test_text_calibration_equals_tokenized_calibration(tmp_path, hf_bpe_tokenizer):
    """A jsonl --calib is tokenized with the source's tokenizer exactly as `data tokenize` writes it."""
    tokenize_corpus(SAMPLE_VALID, hf_bpe_tokenizer, tmp_path / "data", type_key=None)
    for seed in (0, 3):
        from_text = calibration_batches(SAMPLE_VALID, 2000, 100, seed, BPE_IDS, tokenizer=hf_bpe_tokenizer)
        from_data = calibration_batches(tmp_path / "data", 2000, 100, seed, BPE_IDS)
        assert from_text.ids.shape == (20, 100) and torch.equal(from_text.ids, from_data.ids)
        assert from_text.documents == from_data.documents
    # text is in the source vocabulary already: a token map does not apply to it
    mapped = calibration_batches(SAMPLE_VALID, 2000, 100, 3, BPE_IDS, token_map=torch.arange(10),
                                 tokenizer=hf_bpe_tokenizer)
    assert torch.equal(mapped.ids, from_text.ids)
    with pytest.raises(UserError, match=r"tokenizer has 1500 tokens but the source's vocab_size is 1000"):
        calibration_batches(SAMPLE_VALID, 2000, 100, 0, 1000, tokenizer=hf_bpe_tokenizer)


def _hf_source(folder, tokenizer_folder=None):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=BPE_IDS, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    if tokenizer_folder is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tokenizer_folder / name, folder / name)
    return folder


def test_inherit_calibrates_on_text_with_the_sources_own_tokenizer(tmp_path, hf_bpe_tokenizer, capsys):
    from rethinktiny.inherit.apply import inherit

    src = _hf_source(tmp_path / "hf", hf_bpe_tokenizer)
    target = str(_target_file(tmp_path, ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=2,
                                                    num_kv_heads=1, intermediate_size=48, vocab_size=BPE_IDS)))
    kwargs = dict(width="activation", layers="first-last", calib_tokens=256, calib_seq_len=64)
    out = inherit(src, target, tmp_path / "from_text", calib=SAMPLE_VALID, **kwargs)
    tokenize_corpus(SAMPLE_VALID, hf_bpe_tokenizer, tmp_path / "data", type_key=None)
    same = inherit(src, target, tmp_path / "from_data", calib=tmp_path / "data", **kwargs)
    a, b = (torch.load(f / "model_tp0_pp0.pt", weights_only=True) for f in (out, same))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["calib_tokenizer"] == str(src)
    # A source without a tokenizer next to it needs --calib-tokenizer.
    bare = _hf_source(tmp_path / "bare")
    _one_line_exit_2(["inherit", "--src", str(bare), "--target", target, "--dst",
                      str(tmp_path / "x"), "--width", "activation", "--calib", str(SAMPLE_VALID)], capsys,
                     "text calibration needs the source model's tokenizer", "--calib-tokenizer")
    assert not (tmp_path / "x").exists()
    assert main(["inherit", "--src", str(bare), "--target", target, "--dst",
                 str(tmp_path / "y"), "--width", "activation", "--layers", "first-last", "--calib", str(SAMPLE_VALID),
                 "--calib-tokenizer",
                 str(hf_bpe_tokenizer), "--calib-tokens", "256", "--calib-seq-len", "64"]) == 0
    c = torch.load(tmp_path / "y" / "model_tp0_pp0.pt", weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


def _target_file(tmp_path, cfg):
    path = tmp_path / "target.py"
    path.write_text(f'model_type = "PANGU_PI_PRO"\nmodel = dict(num_attention_heads={cfg.num_attention_heads}, '
                    f"num_kv_attention_heads={cfg.num_kv_heads}, hidden_size={cfg.hidden_size}, "
                    f"num_layers={cfg.num_layers}, intermediate_size={cfg.intermediate_size}, "
                    f"vocab_size={cfg.vocab_size}, no_bias=True)\n")
    return path


def test_from_hf_copies_the_tokenizer_so_eval_and_inherit_find_it(tmp_path, hf_bpe_tokenizer, held_out):
    from rethinktiny.convert.import_hf import from_hf
    from rethinktiny.inherit.apply import inherit

    src = _hf_source(tmp_path / "hf", hf_bpe_tokenizer)
    (src / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<|im_end|>"}))
    ckpt = from_hf(src, tmp_path / "ckpt", progress=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (ckpt / name).read_bytes() == (src / name).read_bytes()
    on_hf = evaluate_perplexity(src, held_out, seq_len=64, max_documents=4, progress=False)
    on_ckpt = evaluate_perplexity(ckpt, held_out, seq_len=64, max_documents=4, progress=False)  # no --tokenizer
    assert on_ckpt.tokens == on_hf.tokens and on_ckpt.loss == pytest.approx(on_hf.loss, rel=1e-5)
    target = str(_target_file(tmp_path, ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=2,
                                                    num_kv_heads=1, intermediate_size=48, vocab_size=BPE_IDS)))
    kwargs = dict(width="taylor", calib=SAMPLE_VALID, calib_tokens=128, calib_seq_len=64)
    a = inherit(src, target, tmp_path / "a", **kwargs)
    b = inherit(ckpt, target, tmp_path / "b", **kwargs)
    sa, sb = (torch.load(f / "model_tp0_pp0.pt", weights_only=True) for f in (a, b))
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
