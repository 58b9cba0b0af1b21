"""A real byte-level BPE `tokenizer.json` folder, trained here with the `tokenizers` library in the
layout of SmolLM2's (bos = eos = unk = `<|endoftext|>` id 0, chat markers 1-2, digits split one by
one before byte-level pre-tokenization, no special tokens added by the post-processor)."""

from __future__ import annotations

import json
from pathlib import Path

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_byte_level_bpe(texts: list[str], vocab_size: int = 1500):
    """A `tokenizers.Tokenizer` trained on `texts` (about two seconds on the bundled sample)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def write_hf_folder(tokenizer, folder: Path, **config) -> Path:
    """`tokenizer.json` + `tokenizer_config.json` as transformers' save_pretrained lays them out;
    `config` overrides the SmolLM2-like defaults (e.g. add_bos_token=True)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[0], "eos_token": SPECIALS[0],
                "unk_token": SPECIALS[0], "model_max_length": 8192}
    settings.update(config)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=1), encoding="utf-8")
    return folder
