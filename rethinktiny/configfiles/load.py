"""InternEvo Python config files (`configs/LLM1B.py` style), read without InternEvo.

InternEvo's `Config.from_file` executes the file and keeps its public globals; we do the same
with `runpy`, so a config that computes values (`total_steps=data["total_steps"]`) reads the same.
"""

from __future__ import annotations

import ast
import runpy
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
    return {k: v for k, v in namespace.items()
            if not k.startswith("_") and not isinstance(v, (types.ModuleType, types.FunctionType, type))}


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


def parse_override(text: str) -> tuple[list[str], Any]:
    """`data.total_steps=40` -> (["data", "total_steps"], 40). Values are Python literals; anything
    that is not one (a bare path, say) is taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE (e.g. data.total_steps=40)")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise UserError(f"--set {text!r}: empty key")
    try:
        value = _literal(ast.parse(raw.strip(), mode="eval").body)
    except (ValueError, SyntaxError):
        value = raw.strip()
    return path, value


def _literal(node: ast.AST):
    """A Python literal, also inside `dict(key=...)` calls (the way config files spell dicts)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


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
