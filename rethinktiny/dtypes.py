"""One vocabulary for weight dtypes, used by every `--dtype` (and config files' `model.dtype`).

Every command accepts the same strings for the same dtype: the torch name (`float32`), its short
form (`fp32`) and InternEvo's config spelling (`torch.float32`). Commands that write weights read
from elsewhere (`convert`, `inherit`) also accept `auto` (or its synonym `source`): keep the
input's dtype, which `parse_dtype` returns as None. Config files' `model.dtype` may also say
`torch.tf32` (InternEvo's spelling, offered by configs/LLM1B.py): float32 weights with TF32
matmuls on GPUs that have them; `dtype_name(..., tf32=True)` accepts it as `tf32`, `parse_dtype`
stores it as float32 and `use_matmul_precision` turns the TF32 matmuls on where the model runs.

No torch import at module level: the CLI declares its flags with this module, and `rethinktiny
vocab ...` must not pay for torch.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from rethinktiny.errors import UserError

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes
SHORT_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
KEEP = ("auto", "source")  # "keep the input's dtype"; inherit spelled it source, convert auto
TF32 = "tf32"  # float32 storage, TF32 matmuls (InternEvo's `torch.tf32`)


def dtype_name(value: str | torch.dtype, flag: str = "--dtype", keep: bool = False, tf32: bool = False) -> str:
    """The canonical name (`float32`, `bfloat16`, `float16`, `auto` when `keep`, `tf32` when
    `tf32`) of a dtype.

    Args:
        value: any accepted spelling, or a torch dtype.
        flag: what to name in the error (`--dtype`, `model.dtype`, a file and key).
        keep: also accept `auto` / `source` (keep the input's dtype).
        tf32: also accept `tf32` / `torch.tf32` (a config file's `model.dtype`).
    """
    name = str(value).removeprefix("torch.")
    name = SHORT_NAMES.get(name, name)
    if keep and name in KEEP:
        return "auto"
    if tf32 and name == TF32:
        return TF32
    if name not in DTYPES:
        choices = [*KEEP, *DTYPES] if keep else [*DTYPES, *((TF32,) if tf32 else ())]
        raise UserError(f"{flag}: unknown dtype {str(value)!r}; choose one of {', '.join(choices)} "
                        f"(or {', '.join(SHORT_NAMES)})")
    return name


def parse_dtype(value: str | torch.dtype, flag: str = "--dtype", keep: bool = False) -> torch.dtype | None:
    """The torch dtype of `value` (None for `auto` / `source` when `keep`; float32 storage for
    `tf32`); see `dtype_name`."""
    import torch

    name = dtype_name(value, flag, keep, tf32=True)
    return None if name == "auto" else torch.float32 if name == TF32 else getattr(torch, name)


def use_matmul_precision(value: str | torch.dtype) -> None:
    """Turn TF32 matmuls and convolutions on when `value` is tf32 (where the model runs); other
    dtypes leave torch's defaults alone."""
    if dtype_name(value, keep=True, tf32=True) == TF32:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def dtype_argument(keep: bool = False):
    """An argparse `type=` for `--dtype`: any accepted spelling becomes the canonical name, a bad
    one is argparse's usage error (exit 2)."""

    def convert(text: str) -> str:
        try:
            return dtype_name(text, keep=keep)
        except UserError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("--dtype: ")) from None

    convert.__name__ = "dtype"  # argparse names the type in "invalid dtype value" messages
    return convert


def config_dtype_argument():
    """An argparse `type=` for the dtype written into an InternEvo config (`config export --dtype`):
    any spelling above becomes InternEvo's `torch.<name>`; `tf32` / `torch.tf32` (InternEvo's float32
    with TF32 matmuls) is accepted too."""
    plain = dtype_argument()

    def convert(text: str) -> str:
        if text.removeprefix("torch.") == "tf32":
            return "torch.tf32"
        return "torch." + plain(text)

    convert.__name__ = "dtype"
    return convert


def dtype_help(keep: bool = False) -> str:
    """The accepted values, for a flag's help text."""
    return " | ".join([*(("auto",) if keep else ()), *DTYPES]) + " (or fp32, bf16, fp16)"
