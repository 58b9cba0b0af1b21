"""InternEvo Python config files (`configs/LLM1B.py` style), read without InternEvo.

InternEvo's `Config.from_file` executes the file and keeps its public globals; we do the same
with `runpy`, so a config that computes values (`total_steps=data["total_steps"]`) reads the same.
"""

from __future__ import annotations

import ast
import operator
import runpy
import traceback
import types
from pathlib import Path
from typing import Any

from rethinktiny.config import MODEL_TYPES, ModelConfig, from_internevo, get_preset
from rethinktiny.errors import UserError


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The public, non-module globals of an InternEvo config file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        namespace = runpy.run_path(str(path))
    except SyntaxError as err:
        raise UserError(f"{path}:{err.lineno}: syntax error in config ({err.msg})") from None
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - the config is user code: any failure is a bad config
        raise UserError(f"{path}:{_config_line(path, err)}: running the config raised "
                        f"{type(err).__name__}: {err}") from None
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


def _config_line(path: Path, err: Exception) -> str:
    """The line of `path` (the config itself, not a module it called) where `err` was raised."""
    lines = [frame.lineno for frame in traceback.extract_tb(err.__traceback__)
             if Path(frame.filename).resolve() == path.resolve()]
    return str(lines[-1]) if lines else "?"


def model_config_from_file(path: str | Path) -> ModelConfig:
    """ModelConfig of the `model=dict(...)` entry (a `preset=` key names the base preset)."""
    config = load_config_file(path)
    if "model" not in config:
        raise UserError(f"{path}: no model=dict(...) entry")
    model_type = config.get("model_type", "INTERNLM")
    if model_type not in (*MODEL_TYPES, "LLAMA2"):
        raise UserError(f"{path}: model_type {model_type!r} is not one of {[*MODEL_TYPES, 'LLAMA2']}")
    entry = dict(config["model"])
    if "preset" in entry:
        get_preset(entry["preset"])  # unknown preset -> clear error
    return from_internevo(entry, source=f"{path}: model")


LOCAL_PREFIX = "local:"  # InternEvo's storage prefix for the file system (it also knows boto3:, oss2:, volc:)


def local_path(path: str | None, key: str | None = None) -> Path | None:
    """The file-system folder of an InternEvo storage path: `local:X` or a plain `X` is Path(X).

    Args:
        path: the config value (None or "" gives None).
        key: the config key, for callers that need a local folder: another storage prefix is then a
            UserError naming it; without `key` it gives None (nothing local to write next to).
    """
    if not path:
        return None
    if path.startswith(LOCAL_PREFIX):
        return Path(path[len(LOCAL_PREFIX):])
    if ":" in path.split("/")[0]:
        if key is not None:
            raise UserError(f"{key} {path!r}: only local folders ({LOCAL_PREFIX} or a plain path) are supported")
        return None
    return Path(path)


def override_key(text: str) -> list[str]:
    """The key of a `--set KEY=VALUE` item as its path: `data.total_steps=40` -> ["data", "total_steps"]."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE (e.g. data.total_steps=40)")
    path = [part for part in text.split("=", 1)[0].strip().split(".") if part]
    if not path:
        raise UserError(f"--set {text!r}: empty key")
    return path


def parse_override(text: str, strict: bool = True) -> tuple[list[str], Any]:
    """`data.total_steps=40` -> (["data", "total_steps"], 40).

    Values are Python literals, `dict(...)` calls of them (as config files spell dicts) and
    arithmetic of numbers (`2**16`). A value that is none of these is an error (a typo such as
    `micro_bsz=2O` would otherwise reach the ranks as a string), except the strings a shell user
    types bare: storage and file paths (`local:/ckpt`, `/data/train`, `./out`) and InternEvo's dtype
    spelling (`torch.bfloat16`). Any other string is quoted: `--set 'data.sampler="multi_round"'`.

    Args:
        text: the `KEY=VALUE` item.
        strict: False keeps any non-literal as a string (reading items recorded by older versions).
    """
    path = override_key(text)
    raw = text.split("=", 1)[1].strip()
    try:
        return path, _literal(ast.parse(raw, mode="eval").body)
    except (ValueError, TypeError, SyntaxError, ArithmeticError):
        if strict and not _bare_string(raw):
            key = ".".join(path)
            raise UserError(f"--set {text}: {raw!r} is not a Python literal (number, True/False/None, quoted string, "
                            f"list, tuple, dict(...)); quote a string: --set '{key}=\"{raw}\"'") from None
        return path, raw


STORAGE_PREFIXES = (LOCAL_PREFIX, "boto3:", "oss2:", "volc:")  # InternEvo's storage back ends
BARE_STRING_PREFIXES = (*STORAGE_PREFIXES, "/", "./", "../", "~", "torch.")


def _bare_string(raw: str) -> bool:
    """A path or dtype name typed without quotes (see `parse_override`): `data/train` is a relative path."""
    return raw.startswith(BARE_STRING_PREFIXES) or ("/" in raw and " " not in raw)


def _literal(node: ast.AST):
    """A Python literal, also inside `dict(key=...)` calls (the way config files spell dicts)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left), _literal(node.right)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (left, right)):
            return _ARITHMETIC[type(node.op)](left, right)
        raise ValueError("arithmetic of non-numbers")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and not isinstance(
            node.operand, ast.Constant):  # -2**3; a plain -1 is literal_eval's
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
        raise ValueError("sign of a non-number")
    return ast.literal_eval(node)


# what config files write for sizes (`512 * 1024 * 1024`, `2**16`); ** bounded so `9**9**9` cannot hang
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
               ast.FloorDiv: operator.floordiv, ast.Pow: lambda a, b: a ** b if abs(b) <= 64 else _too_big()}


def _too_big():
    raise ValueError("exponent too large")


def apply_overrides(config: dict, overrides: list[str]) -> None:
    """Set `--set KEY=VALUE` items in a loaded config (a dict, or InternEvo's Config)."""
    for text in overrides:
        path, value = parse_override(text)
        node = config
        for part in path[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"--set {text}: the config has no {part!r} under {'.'.join(path[:path.index(part)]) or 'top level'}")
            node = node[part]
        if hasattr(node, "_add_item"):  # InternEvo's Config wraps nested dicts itself
            node._add_item(path[-1], value)
        else:
            node[path[-1]] = value
