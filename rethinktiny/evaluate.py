"""Held-out loss and perplexity of a model on a jsonl text file, for either model form:
a Hugging Face folder (loaded with transformers, offline) or an InternEvo checkpoint (our
`PanGuPi`). Both forms go through the same tokenization rule and the same scoring loop, so an
export and its source give the same number.

Rule: each document is `Tokenizer.frame(ids)` (as `data tokenize` writes training data:
SentencePiece `<s> ids </s>`); when that framing has no BOS (SmolLM2: `ids <|endoftext|>`), the
tokenizer's BOS, else its EOS, is put before it as context (what precedes a document in the packed
stream, and lm-evaluation-harness's prefix token), so every text token is predicted. Each document is
cut into windows of at most `seq_len` predicted tokens; window k starts where window k-1 ended (one
token of overlap, no extra context), so every token after the first is predicted exactly once. Loss is the
mean next-token negative log-likelihood over all predicted tokens; perplexity is exp(loss).

Per byte and per character (comparable across tokenizers, and with lm-evaluation-harness): the
summed NLL of every predicted token, in bits, over the UTF-8 bytes of the evaluated texts
(`bits_per_byte`), and in nats over their Unicode characters (`nats_per_character`). BOS/EOS count
as no bytes: BOS is never predicted (it is context), EOS is predicted and its NLL counts (the model
must end the document), so with `--no-eos` the figures are exactly lm-eval's rolling-loglikelihood
`bits_per_byte` for the same texts (which scores the text's tokens after its prefix token only).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from rethinktiny.config import ModelConfig
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.tokenizer import Tokenizer, find_tokenizer, load_tokenizer

IGNORE = -100


@dataclass
class EvalModel:
    """What scoring needs from a model: logits for [B, S] ids, and its text -> ids rule."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    tokenizer: Tokenizer
    form: str


@dataclass
class PerplexityResult:
    loss: float
    perplexity: float
    tokens: int
    documents: int
    windows: int
    form: str
    nll: float = 0.0  # summed over all predicted tokens, nats
    bytes: int = 0  # UTF-8 bytes of the evaluated texts (BOS/EOS count none)
    characters: int = 0  # Unicode code points of the evaluated texts
    bits_per_byte: float = 0.0
    nats_per_character: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def model_tokenizer(path: str | os.PathLike | None, folders: tuple[Path, ...]) -> Tokenizer:
    """The tokenizer given, else the first of `folders` holding one (loaded before the weights, so a
    bad tokenizer fails fast; the caller checks it fits with `Tokenizer.check_fits`).

    Args:
        path: --tokenizer (SentencePiece model, or folder with tokenizer.model or tokenizer.json).
        folders: where to look when `path` is None (the model's own folders).
    """
    if path is None:
        path = find_tokenizer(*folders)
        if path is None:
            raise UserError(f"{folders[-1]}: no tokenizer.model or tokenizer.json next to the model; pass --tokenizer")
    return load_tokenizer(path)


def load_hf_model(folder: Path, tokenizer: str | os.PathLike | None, dtype: str) -> EvalModel:
    """An HF causal LM folder (local files only; no remote code)."""
    import transformers
    from transformers import AutoModelForCausalLM

    loaded = model_tokenizer(tokenizer, (folder,))
    # transformers < 4.56 spells the keyword torch_dtype (and ignores dtype=).
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                     **{dtype_key: parse_dtype(dtype)})
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"{folder}: cannot load as a Hugging Face causal LM ({err})") from None
    model.eval()
    loaded.check_fits(model.config.vocab_size)
    return EvalModel(lambda ids: model(input_ids=ids, use_cache=False).logits, loaded, "huggingface")


def load_internevo_model(path: Path, config: ModelConfig | str | os.PathLike | None,
                         tokenizer: str | os.PathLike | None, dtype: str) -> EvalModel:
    """An InternEvo checkpoint (any tp/pp layout) as our `PanGuPi`."""
    from rethinktiny.checkpoint import find_step_folder, load_model
    from rethinktiny.convert.export import resolve_model_config

    model = load_model(path, resolve_model_config(config), dtype)
    cfg = model.cfg
    # from-hf and inherit put the tokenizer next to the weights (step folder) or in the folder given.
    loaded = model_tokenizer(tokenizer, (find_step_folder(path), path))
    loaded.check_fits(cfg.vocab_size)
    return EvalModel(model, loaded, "internevo")


def load_eval_model(model: str | os.PathLike, config: ModelConfig | str | os.PathLike | None = None,
                    tokenizer: str | os.PathLike | None = None, dtype: str = "float32") -> EvalModel:
    """An HF folder (has config.json) or an InternEvo checkpoint folder, ready to score.

    Args:
        model: HF model folder, or InternEvo step folder / save folder (latest step).
        config: InternEvo form only: ModelConfig or InternEvo config file (default: the
            checkpoint's model_config.json / model_config.pt).
        tokenizer: SentencePiece model file, or folder with tokenizer.model or an HF tokenizer.json
            (default: the HF folder's own, or the one next to an InternEvo checkpoint).
        dtype: float32, bfloat16 or float16.
    """
    path = Path(model)
    if not path.is_dir():
        raise UserError(f"{path}: model folder not found")
    if (path / "config.json").is_file():
        if config is not None:
            raise UserError(f"--config: {path} is a Hugging Face folder, its config.json is used")
        return load_hf_model(path, tokenizer, dtype)
    return load_internevo_model(path, config, tokenizer, dtype)


def document_windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """Windows of at most seq_len + 1 ids, overlapping by one, so each id after the first is a
    target exactly once."""
    return [ids[start:start + seq_len + 1] for start in range(0, len(ids) - 1, seq_len)]


def score_windows(forward: Callable[[torch.Tensor], torch.Tensor], windows: list[list[int]],
                  batch_size: int, progress: bool = True) -> tuple[float, int]:
    """(sum of next-token NLL, number of predicted tokens) over `windows`.

    Windows are batched by length and right-padded; causal attention means padding at the end
    never changes the logits of real positions, and padded targets are ignored.
    """
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
    total, count = 0.0, 0
    with torch.no_grad(), tqdm(total=len(windows), desc="eval ppl", unit="window", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = [windows[i] for i in order[start:start + batch_size]]
            width = len(batch[0]) - 1
            inputs = torch.zeros(len(batch), width, dtype=torch.long)
            targets = torch.full((len(batch), width), IGNORE, dtype=torch.long)
            for row, window in enumerate(batch):
                inputs[row, :len(window) - 1] = torch.tensor(window[:-1])
                targets[row, :len(window) - 1] = torch.tensor(window[1:])
            logits = forward(inputs).float()
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                     ignore_index=IGNORE, reduction="sum").item()
            count += int((targets != IGNORE).sum())
            bar.update(len(batch))
    return total, count


def scored_document(tokenizer: Tokenizer, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
    """The ids one document is scored on (the module doc's rule): `frame(ids)`, with BOS (else EOS)
    as context in front when the framing starts with none."""
    document = tokenizer.frame(ids, bos=add_bos, eos=add_eos)
    context = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    if add_bos and not tokenizer.prefix and context is not None:
        document = [context] + document
    return document


def tokenize_documents(model: EvalModel, texts: list[str], add_bos: bool, add_eos: bool,
                       batch_docs: int = 256) -> list[list[int]]:
    """Each text as `scored_document` with the model's own tokenizer."""
    documents = []
    for start in range(0, len(texts), batch_docs):
        documents.extend(scored_document(model.tokenizer, ids, add_bos, add_eos)
                         for ids in model.tokenizer.encode_batch(texts[start:start + batch_docs]))
    return documents


def evaluate_perplexity(model: str | os.PathLike, data: str | os.PathLike,
                        config: ModelConfig | str | os.PathLike | None = None,
                        tokenizer: str | os.PathLike | None = None, seq_len: int = 2048, batch_size: int = 4,
                        text_key: str = "text", add_bos: bool = True, add_eos: bool = True,
                        max_documents: int | None = None, dtype: str = "float32",
                        progress: bool = True) -> PerplexityResult:
    """Held-out loss and perplexity of an HF folder or InternEvo checkpoint on a jsonl file.

    Args:
        model: HF model folder or InternEvo checkpoint folder (see `load_eval_model`).
        data: jsonl file with a `text_key` field per line.
        config: InternEvo form: ModelConfig or InternEvo config file.
        tokenizer: SentencePiece model or HF tokenizer folder (see `load_eval_model`).
        seq_len: most tokens predicted per window.
        batch_size: windows per forward pass.
        add_bos, add_eos: frame each document with the tokenizer's BOS (or context token) / EOS.
        max_documents: score only the first N documents.
        dtype: model dtype (float32, bfloat16, float16); the loss is computed in float32.
    """
    from rethinktiny.data.prepare import iter_jsonl_texts

    if seq_len < 1 or batch_size < 1:
        raise UserError("--seq-len and --batch-size must be positive")
    texts = [text for _, text in iter_jsonl_texts(data, text_key, None)][:max_documents]
    if not texts:
        raise UserError(f"{data}: no documents")
    loaded = load_eval_model(model, config, tokenizer, dtype)
    documents = tokenize_documents(loaded, texts, add_bos, add_eos)
    windows = [w for ids in documents for w in document_windows(ids, seq_len)]
    if not windows:
        raise UserError(f"{data}: no document has two or more tokens to score")
    total, count = score_windows(loaded.forward, windows, batch_size, progress)
    loss = total / count
    num_bytes = sum(len(text.encode("utf-8")) for text in texts)
    characters = sum(len(text) for text in texts)
    return PerplexityResult(loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=count,
                            documents=len(documents), windows=len(windows), form=loaded.form, nll=total,
                            bytes=num_bytes, characters=characters,
                            bits_per_byte=total / math.log(2) / max(num_bytes, 1),
                            nats_per_character=total / max(characters, 1))
