"""The context length an export declares (HF `max_position_embeddings`, GGUF `context_length`):
the sequence length the checkpoint was trained with, not a constant.

Where it is read, first found wins:
1. the InternEvo config file passed with `--config` (`data=dict(seq_len=...)`);
2. the training config InternEvo saves into every step folder (`config_file.pt`: the config file's
   text, plus the `--set` overrides our launcher appends as `# data.seq_len=...` comment lines).
   The text is read with `ast`, never executed: `seq_len=` may be a literal or a module-level
   name bound to one (`SEQ_LEN = 256 ... seq_len=SEQ_LEN`), as in InternEvo's and our configs.
A model-only checkpoint (`convert from-hf`, `inherit apply`) has neither: then LLaMA's 2048 is
written, with a warning and the source recorded in the manifest, and an explicit value wins.
"""

from __future__ import annotations

import ast
import os
import warnings
from pathlib import Path

from rethinktiny.errors import UserError

# InternEvo's name for the training config text in a step folder (`CheckpointManager.save_checkpoint`).
CONFIG_TEXT_FILE = "config_file.pt"
OVERRIDE_HEADER = "# overridden on the command line (--set):"
# What a model-only checkpoint gets (LLaMA's and InternEvo's default sequence length).
FALLBACK_CONTEXT = 2048


def seq_len_from_config_text(text: str, source: str) -> int | None:
    """`data.seq_len` of an InternEvo config file's text, `--set` overrides applied; None if absent.

    Args:
        text: the config file's Python source.
        source: file name for error messages.
    """
    override = _override_seq_len(text, source)
    if override is not None:
        return override
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise UserError(f"{source}:{err.lineno}: syntax error in the training config ({err.msg})") from None
    names: dict[str, object] = {}
    found = None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        target = node.targets[0].id
        if isinstance(node.value, ast.Constant):
            names[target] = node.value.value
        elif target == "data":
            found = _dict_entry(node.value, "seq_len")
    if found is None:
        return None
    value = names.get(found.id) if isinstance(found, ast.Name) else getattr(found, "value", None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"{source}: data.seq_len is not a positive integer literal ({ast.unparse(found)})")
    return value


def _dict_entry(node: ast.expr, key: str) -> ast.expr | None:
    """The value node of `key` in `dict(key=...)` or `{"key": ...}`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return next((kw.value for kw in node.keywords if kw.arg == key), None)
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and k.value == key:
                return v
    return None


def _override_seq_len(text: str, source: str) -> int | None:
    from rethinktiny.configfiles.load import parse_override

    if OVERRIDE_HEADER not in text:
        return None
    value = None
    for line in text.split(OVERRIDE_HEADER, 1)[1].splitlines():
        item = line.removeprefix("#").strip()
        if not item:
            continue
        path, parsed = parse_override(item)
        if path == ["data", "seq_len"]:
            if not isinstance(parsed, int) or parsed < 1:
                raise UserError(f"{source}: --set data.seq_len={parsed!r} is not a positive integer")
            value = parsed  # the last override wins, as when the launcher applies them
    return value


def training_seq_len(step_folder: Path, config: object = None) -> tuple[int, str] | None:
    """(sequence length, where it was read) of the run that trained the checkpoint, or None.

    Args:
        step_folder: the checkpoint's step folder.
        config: the `--config` argument of the export: an InternEvo config file path (read
            first), a ModelConfig (it has no sequence length) or None.
    """
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        value = seq_len_from_config_text(path.read_text(encoding="utf-8"), str(path))
        if value is not None:
            return value, f"{path}: data.seq_len"
    saved = step_folder / CONFIG_TEXT_FILE
    if saved.is_file():
        import torch

        try:
            text = torch.load(saved, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing problem
            raise UserError(f"{saved}: cannot read the saved training config ({err})") from None
        if isinstance(text, str):
            value = seq_len_from_config_text(text, str(saved))
            if value is not None:
                return value, f"{saved}: data.seq_len"
    return None


def resolve_context_length(explicit: int | None, step_folder: Path, config: object = None) -> tuple[int, str]:
    """(context length, where from): `explicit` when given, else the training sequence length.

    Args:
        explicit: `--max-position-embeddings` / `--context-length` (None: from the training config).
        step_folder: the checkpoint's step folder.
        config: the export's `--config` argument.
    """
    if explicit is not None:
        if explicit < 1:
            raise UserError(f"--max-position-embeddings must be positive, got {explicit}")
        return explicit, "command line"
    found = training_seq_len(step_folder, config)
    if found is None:
        warnings.warn(f"{step_folder}: no training config tells the sequence length the model was trained with "
                      f"(no data.seq_len in --config, no {CONFIG_TEXT_FILE}); writing {FALLBACK_CONTEXT}, pass "
                      f"--max-position-embeddings / --context-length to set it", stacklevel=2)
        return FALLBACK_CONTEXT, f"fallback {FALLBACK_CONTEXT}: no training config found"
    return found
