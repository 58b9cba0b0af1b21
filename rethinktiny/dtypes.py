"""One vocabulary for weight dtypes, used by every `--dtype` (and config files' `model.dtype`).

Every command accepts the same strings for the same dtype: the torch name (`float32`), its short
form (`fp32`) and InternEvo's config spelling (`torch.float32`). Commands that write weights read
from elsewhere (`convert`, `inherit`) also accept `auto` (or its synonym `source`): keep the
input's dtype, which `parse_dtype` returns as None.

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


def dtype_name(value: str | torch.dtype, flag: str = "--dtype", keep: bool = False) -> str:
    """The canonical name (`float32`, `bfloat16`, `float16`, or `auto` when `keep`) of a dtype.

    Args:
        value: any accepted spelling, or a torch dtype.
        flag: what to name in the error (`--dtype`, `model.dtype`, a file and key).
        keep: also accept `auto` / `source` (keep the input's dtype).
    """
    name = str(value).removeprefix("torch.")
    name = SHORT_NAMES.get(name, name)
    if keep and name in KEEP:
        return "auto"
    if name not in DTYPES:
        choices = [*KEEP, *DTYPES] if keep else list(DTYPES)
        raise UserError(f"{flag}: unknown dtype {str(value)!r}; choose one of {', '.join(choices)} "
                        f"(or {', '.join(SHORT_NAMES)})")
    return name


def parse_dtype(value: str | torch.dtype, flag: str = "--dtype", keep: bool = False) -> torch.dtype | None:
    """The torch dtype of `value` (None for `auto` / `source` when `keep`); see `dtype_name`."""
    import torch

    name = dtype_name(value, flag, keep)
    return None if name == "auto" else getattr(torch, name)


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
