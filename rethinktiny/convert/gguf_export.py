"""InternEvo checkpoint (ours or InternEvo LLAMA2) -> one GGUF file for llama.cpp, written with the
`gguf` package (llama.cpp's own Python writer).

What llama.cpp's LLaMA architecture reads, and where it comes from here:
- metadata: `llama.*` shape keys from the model config; `llama.context_length` = the training
  sequence length (`rethinktiny.convert.context_length`), RoPE base, RMSNorm epsilon.
- tensors: llama.cpp names (`token_embd`, `blk.N.attn_q`, ...). llama.cpp's LLaMA RoPE rotates
  interleaved channel pairs (2i, 2i+1), Meta's original layout; that is InternEvo's layout too, so
  our q/k rows go in as they are (llama.cpp's `convert_hf_to_gguf.py` permutes HF's `rotate_half`
  rows back to exactly this). A tied output is not stored (llama.cpp then uses `token_embd`).
- types: `f32` everything in float32; `f16` matrices in float16; `q8_0` matrices whose rows are a
  multiple of 32 in Q8_0 (others float16); norms and biases always float32 (as llama.cpp's converter).
- vocabulary: a SentencePiece model as `tokenizer.ggml.model = llama` (pieces, scores, piece types,
  `add_space_prefix` from its dummy-prefix setting); a Hugging Face byte-level BPE `tokenizer.json`
  as `gpt2` (tokens by id, merges, `tokenizer.ggml.pre` from its pre-tokenizer). BOS/EOS/UNK/PAD ids,
  and `add_bos_token` = whether the training framing starts with BOS (SentencePiece: yes, every
  document is `<s> ... </s>`; HF: what its post-processor adds), so llama.cpp frames a prompt the way
  training did.
Tensors are produced one at a time (header first, from shapes alone), so memory stays about one
tensor above the memory-mapped checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rethinktiny.artifacts import check_writable, output_dir, write_manifest
from rethinktiny.config import ModelConfig
from rethinktiny.convert.context_length import resolve_context_length
from rethinktiny.convert.gguf_read import TABLE
from rethinktiny.convert.keys import rename
from rethinktiny.errors import UserError

GGUF_FILE = "model.gguf"
OUTTYPES = ("f32", "f16", "q8_0")
Q8_BLOCK = 32
# Our names -> llama.cpp's (gguf.constants.MODEL_TENSOR names for LLM_ARCH_LLAMA): the inverse of
# the one GGUF key table, the reader's.
TO_GGUF: dict[str, str] = {ours: gguf for gguf, ours in TABLE.items()}
# tokenizers' pre-tokenizer layouts -> the llama.cpp pre-tokenizer that splits text the same way.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def gguf_tensor_name(name: str) -> str:
    """llama.cpp's name for one of our parameter names."""
    found = rename(name, TO_GGUF)
    if found is None:
        raise UserError(f"{name}: no llama.cpp LLaMA tensor for this parameter")
    return found


def tensor_type(name: str, shape: tuple[int, ...], outtype: str):
    """The GGML type a tensor is stored in for `outtype` (see the module doc)."""
    from gguf import GGMLQuantizationType as Q

    if outtype == "f32" or len(shape) == 1:
        return Q.F32
    if outtype == "q8_0" and shape[-1] % Q8_BLOCK == 0:
        return Q.Q8_0
    return Q.F16


def encode_tensor(tensor: torch.Tensor, qtype) -> np.ndarray:
    """The bytes llama.cpp reads for `tensor` stored as `qtype` (F32, F16 or Q8_0)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    data = tensor.detach().to(torch.float32).contiguous().numpy()
    if qtype == Q.F32:
        return data
    if qtype == Q.F16:
        return data.astype(np.float16)
    return quants.quantize(data, qtype)


def _file_type(outtype: str) -> int:
    from gguf import LlamaFileType

    return {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
            "q8_0": LlamaFileType.MOSTLY_Q8_0}[outtype]


@dataclass
class GGUFVocab:
    """What the writer needs of a tokenizer: the GGUF vocabulary keys."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    scores: list[float] | None
    token_types: list[int]
    merges: list[str] = field(default_factory=list)
    pre: str | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    notes: list[str] = field(default_factory=list)


def sentencepiece_vocab(path: Path) -> GGUFVocab:
    """GGUF vocabulary of a SentencePiece model: every piece with its score and type.

    Args:
        path: SentencePiece model file.
    """
    from rethinktiny.vocab.hf_tokenizer import effective_types
    from rethinktiny.vocab.spmodel import load_model_proto

    proto = load_model_proto(path)
    spec = proto.trainer_spec
    # SentencePiece's piece types are llama.cpp's token types (NORMAL=1 ... BYTE=6); the
    # "\0" piece that byte fallback never outputs goes in as UNUSED, as SentencePiece treats it.
    types = [int(t) for t in effective_types(proto)]
    special = {name: i for name, i in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id),
                                       ("pad", spec.pad_id)) if 0 <= i < len(proto.pieces)}
    notes = []
    rule = proto.normalizer_spec.name
    if rule != "identity":
        notes.append(f"{path}: normalization rule {rule!r}; llama.cpp applies none, so texts it changes "
                     f"(newlines, tabs, full-width characters) tokenize differently there")
    if proto.normalizer_spec.remove_extra_whitespaces:
        notes.append(f"{path}: remove_extra_whitespaces is on; llama.cpp keeps runs of spaces")
    return GGUFVocab(model="llama", tokens=[p.piece for p in proto.pieces], scores=[p.score for p in proto.pieces],
                     token_types=types, special=special, add_bos="bos" in special, add_eos=False,
                     add_space_prefix=proto.normalizer_spec.add_dummy_prefix, notes=notes)


def bpe_pre_type(pre_tokenizer: dict | None, source: Path) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json pre-tokenizer."""
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    kinds = [(s.get("type"), s.get("individual_digits"), s.get("use_regex", True), s.get("add_prefix_space"))
             for s in steps]
    if kinds == [("ByteLevel", None, True, False)]:
        return "gpt2"
    if kinds == [("Digits", True, True, None), ("ByteLevel", None, True, False)]:
        return "smollm"  # SmolLM/SmolLM2: single digits, then GPT-2's split
    raise UserError(f"{source}: pre-tokenizer {json.dumps(pre_tokenizer)[:120]} has no known llama.cpp "
                    f"equivalent (supported: GPT-2 ByteLevel, SmolLM's Digits + ByteLevel)")


def bpe_vocab(path: Path) -> GGUFVocab:
    """GGUF vocabulary of a Hugging Face byte-level BPE `tokenizer.json` (GPT-2 / SmolLM style).

    Args:
        path: tokenizer.json (tokenizer_config.json / special_tokens_map.json beside it name the
            special tokens).
    """
    from gguf import TokenType

    from rethinktiny.tokenizer import load_tokenizer

    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError(f"{path}: only byte-level BPE tokenizer.json files convert to GGUF "
                        f"(model {model.get('type')!r}, decoder {(data.get('decoder') or {}).get('type')!r})")
    loaded = load_tokenizer(path)
    vocab = dict(model["vocab"])
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    for index, token in added.items():
        vocab[token["content"]] = index
    by_id = {i: tok for tok, i in vocab.items()}
    tokens, types = [], []
    for i in range(loaded.vocab_size):
        if i not in by_id:  # a gap in the ids: llama.cpp needs every id named
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        kind = TokenType.NORMAL
        if i in added:
            kind = TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    special = {name: value for name, value in (("bos", loaded.bos_id), ("eos", loaded.eos_id),
                                               ("unk", loaded.unk_id), ("pad", loaded.pad_id)) if value is not None}
    add_bos = bool(loaded.prefix) and loaded.prefix == [loaded.bos_id]
    if loaded.prefix and not add_bos:
        raise UserError(f"{path}: the post-processor prepends {loaded.prefix}, not just BOS; GGUF can only say "
                        f"add_bos_token")
    return GGUFVocab(model="gpt2", tokens=tokens, scores=None, token_types=[int(t) for t in types], merges=merges,
                     pre=bpe_pre_type(data.get("pre_tokenizer"), path), special=special, add_bos=add_bos,
                     add_eos=bool(loaded.suffix) and loaded.suffix[-1:] == [loaded.eos_id])


def placeholder_vocab(vocab_size: int) -> GGUFVocab:
    """A SentencePiece-form vocabulary of `vocab_size` made-up pieces (<unk>, <s>, </s>, the 256
    byte pieces, then "▁t<i>"): for timing a random model in llama.cpp, which needs a vocabulary
    but is then fed token ids directly."""
    from gguf import TokenType

    fixed = 3 + 256
    if vocab_size < fixed:
        raise UserError(f"vocab_size {vocab_size}: a placeholder vocabulary needs at least {fixed} pieces")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += [f"\u2581t{i}" for i in range(vocab_size - fixed)]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL] + [TokenType.BYTE] * 256
    types += [TokenType.NORMAL] * (vocab_size - fixed)
    return GGUFVocab(model="llama", tokens=tokens, scores=[0.0] * fixed + [-float(i) for i in range(vocab_size - fixed)],
                     token_types=[int(t) for t in types], special={"unk": 0, "bos": 1, "eos": 2}, add_bos=True,
                     add_space_prefix=True)


def load_vocab(tokenizer: str | os.PathLike) -> tuple[GGUFVocab, Path]:
    """(GGUF vocabulary, file read) of a SentencePiece model or an HF tokenizer folder / file."""
    from rethinktiny.tokenizer import SENTENCEPIECE, resolve_tokenizer_path

    kind, file = resolve_tokenizer_path(tokenizer)
    return (sentencepiece_vocab(file) if kind == SENTENCEPIECE else bpe_vocab(file)), file


def _add_metadata(writer, cfg: ModelConfig, name: str, context: int, outtype: str, vocab: GGUFVocab) -> None:
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(float(cfg.rope_theta))
    writer.add_layer_norm_rms_eps(float(cfg.norm_eps))
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(2)  # GGML_QNT_VERSION, as llama.cpp's converter writes
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
              "pad": writer.add_pad_token_id}
    for key, value in vocab.special.items():
        adders[key](value)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)


def to_gguf(src: str | os.PathLike, dst: str | os.PathLike, tokenizer: str | os.PathLike, outtype: str = "f16",
            config: ModelConfig | str | os.PathLike | None = None, context_length: int | None = None,
            name: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """Export an InternEvo checkpoint as a llama.cpp GGUF file (LLaMA architecture).

    Args:
        src: step folder with `model_tp*_pp*.pt`, or its parent (latest step); any tp/pp layout.
        dst: output folder (written atomically): `model.gguf` and `manifest.json`.
        tokenizer: the model's tokenizer: SentencePiece model file / folder with tokenizer.model,
            or an HF folder / tokenizer.json (byte-level BPE); or a `GGUFVocab` (`placeholder_vocab`).
        outtype: "f32", "f16" or "q8_0".
        config: ModelConfig or InternEvo config file; default: the checkpoint's model config.
        context_length: `llama.context_length` (default: the training sequence length).
        name: `general.name` (default: the model config's name).
        force: replace an existing `dst`.
    Returns:
        the path of the written `model.gguf`.
    """
    import gguf
    from tqdm import tqdm

    from rethinktiny.convert.export import check_source_keys, open_checkpoint
    from rethinktiny.convert.hf_config import require_llama_equivalent
    from rethinktiny.model import parameter_shapes

    if outtype not in OUTTYPES:
        raise UserError(f"--outtype: unknown type {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    check_writable(dst, force)
    ckpt = open_checkpoint(src, config)
    cfg = ckpt.config
    require_llama_equivalent(cfg, str(ckpt.folder))
    expected = parameter_shapes(cfg)
    ignored = check_source_keys(ckpt, expected)
    vocab, tokenizer_file = (tokenizer, None) if isinstance(tokenizer, GGUFVocab) else load_vocab(tokenizer)
    if len(vocab.tokens) != cfg.vocab_size:
        raise UserError(f"{tokenizer_file}: tokenizer has {len(vocab.tokens)} tokens but the model's vocab_size is "
                        f"{cfg.vocab_size}; export the tokenizer the model was trained with")
    context, context_source = resolve_context_length(context_length, ckpt.folder, config)
    names = [n for n in expected if not (cfg.tie_embeddings and n == "output.weight")]
    plan = [(n, gguf_tensor_name(n), expected[n], tensor_type(gguf_tensor_name(n), expected[n], outtype))
            for n in names]
    with output_dir(dst, force) as tmp:
        writer = gguf.GGUFWriter(tmp / GGUF_FILE, arch="llama")
        _add_metadata(writer, cfg, name or cfg.name, context, outtype, vocab)
        for _, gname, shape, qtype in plan:
            nbytes = _nbytes(shape, qtype)
            writer.add_tensor_info(gname, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for ours, gname, shape, qtype in tqdm(plan, desc="to-gguf", unit="tensor", disable=not progress):
            tensor = ckpt.tensor(ours)
            if tuple(tensor.shape) != shape:
                raise UserError(f"{ckpt.folder}: shape mismatch for {ours}: checkpoint {tuple(tensor.shape)}, "
                                f"model config {shape}")
            writer.write_tensor_data(encode_tensor(tensor, qtype))
        writer.close()
        write_manifest(tmp, "convert to-gguf",
                       dict(src=str(src), tokenizer=str(tokenizer_file or "placeholder vocabulary"), outtype=outtype, config=config and str(config),
                            context_length=context_length, name=name),
                       inputs={"checkpoint": ckpt.folder, **({"tokenizer": tokenizer_file} if tokenizer_file else {})},
                       extra={"model_config": cfg.to_dict(), "source_step_folder": str(ckpt.folder),
                              "source_tp_pp": [ckpt.tp_size, ckpt.pp_size], "ignored_keys": ignored,
                              "context_length": {"value": context, "from": context_source},
                              "vocab": {"model": vocab.model, "pre": vocab.pre, "add_bos": vocab.add_bos,
                                        "special": vocab.special},
                              "notes": vocab.notes})
    return Path(dst) / GGUF_FILE


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block) * size
