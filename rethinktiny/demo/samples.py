"""Greedy samples for `make demo`: every model gets the same prompts through transformers.

    rethinktiny demo samples [--new-tokens N] OUT.json LABEL MODEL [LABEL MODEL ...]

MODEL is a Hugging Face folder, or `FILE.gguf::TOKENIZER_FOLDER` for a GGUF file that
transformers dequantizes (read with the tokenizer of the matching HF export).
"""

from __future__ import annotations

from pathlib import Path

from rethinktiny.artifacts import write_json

PROMPTS = ["The Python interpreter", "Life is", "明月", "def "]
NEW_TOKENS = 24


def load(where: str):
    """(tokenizer, float32 model in eval mode) of an HF folder or a `file.gguf::tokenizer folder` pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "::" in where:
        gguf, tokenizer_dir = where.split("::")
        model = AutoModelForCausalLM.from_pretrained(str(Path(gguf).parent), gguf_file=Path(gguf).name)
        return AutoTokenizer.from_pretrained(tokenizer_dir), model.eval()  # dequantized to float32 already
    return AutoTokenizer.from_pretrained(where), AutoModelForCausalLM.from_pretrained(where).float().eval()


def greedy(tokenizer, model, prompt: str, new_tokens: int = NEW_TOKENS) -> str:
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)


def write_samples(out: Path, models: list[tuple[str, str]], new_tokens: int = NEW_TOKENS) -> dict:
    """Greedy continuations of `PROMPTS` by every (label, model) pair, written to the JSON file `out`.

    Args:
        out: the samples JSON to write.
        models: (column label, model) pairs; a model is an HF folder or `FILE.gguf::TOKENIZER_FOLDER`.
        new_tokens: greedy tokens per prompt.
    """
    samples = {"prompts": PROMPTS, "new_tokens": new_tokens, "models": {}}
    for label, where in models:
        tokenizer, model = load(where)
        samples["models"][label] = [greedy(tokenizer, model, prompt, new_tokens) for prompt in PROMPTS]
        for prompt, text in zip(PROMPTS, samples["models"][label]):
            print(f"{label}: {prompt!r} -> {text!r}", flush=True)
    write_json(out, samples)
    return samples
