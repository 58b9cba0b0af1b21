"""`inherit()`: source checkpoint + target shape -> a model-only folder InternEvo starts from.

Order of work, so that bad input fails before anything expensive and nothing is half-written:
1. check the destination, open the source (names and shapes), resolve the target, read the
   token map, check the target fits the source in every dimension;
2. calibration rows (when a metric or block influence needs them);
3. layer choice, then width scores on the kept layers, then the keep plan;
4. inside `output_dir`: gather the target one layer at a time, check every name and shape,
   write `model_tp0_pp0.pt` + `model_config.json` (`save_model_only`), `inherit_report.json`,
   `layer_importance.png` and `manifest.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rethinktiny.artifacts import check_writable, output_dir, write_manifest
from rethinktiny.checkpoint import check_state_dict, save_model_only
from rethinktiny.config import ModelConfig, get_preset
from rethinktiny.dtypes import parse_dtype
from rethinktiny.errors import UserError
from rethinktiny.inherit import DEFAULT_CALIB_TOKENS, DEFAULT_LAYERS, DEFAULT_WIDTH
from rethinktiny.inherit.calib import Calibration, calibration_batches, is_text_calibration
from rethinktiny.inherit.importance import (CALIBRATED_METRICS, WIDTH_METRICS, WidthScores, activation_scores,
                                            block_influence, learnable_scores, magnitude_scores, random_scores,
                                            shortcut_magnitudes, taylor_scores)
from rethinktiny.inherit.layer_choice import (LAYER_STRATEGIES, choose_layers, is_explicit_list, parse_layer_list,
                                              top_indices)
from rethinktiny.inherit.prune import (KeepPlan, LayerKeep, check_target_fits, choose_heads, prune_globals,
                                       prune_layer)
from rethinktiny.inherit.report import PLOT_FILE, build_report, plot_layer_importance, write_report
from rethinktiny.inherit.sources import Source, open_source
from rethinktiny.model import parameter_shapes
from rethinktiny.tokenizer import find_tokenizer

def resolve_target(target: str | ModelConfig) -> ModelConfig:
    """A ModelConfig, a preset name, or an InternEvo config file path."""
    if isinstance(target, ModelConfig):
        return target
    path = Path(target)
    if path.suffix == ".py" or path.is_file():
        from rethinktiny.configfiles.load import model_config_from_file

        return model_config_from_file(path)
    return get_preset(target)


def read_token_map(path: str | Path, source_vocab: int, target_vocab: int) -> torch.Tensor:
    """The new->old index of a token map file (`rethinktiny.token_map.v1` JSON or a plain list).

    Args:
        path: the JSON file (or a pruned-tokenizer folder holding token_map.json).
        source_vocab: rows of the source embedding.
        target_vocab: rows the target has.
    """
    import json

    from rethinktiny.vocab.tokenmap import load_token_map, validate_token_map

    path = Path(path)
    try:
        body = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON token map ({err})") from None
    if isinstance(body, list):
        new_to_old, old_vocab = body, source_vocab
    else:
        token_map = load_token_map(path)
        new_to_old, old_vocab = list(token_map.new_to_old), token_map.old_vocab_size
    if len(new_to_old) > source_vocab:
        raise UserError(f"{path}: token map has {len(new_to_old)} entries, more than the source vocabulary "
                        f"({source_vocab})")
    if old_vocab > source_vocab:
        raise UserError(f"{path}: token map is for a vocabulary of {old_vocab}, larger than the source's {source_vocab}")
    new_to_old = validate_token_map(new_to_old, old_vocab, str(path))
    if len(new_to_old) != target_vocab:
        raise UserError(f"{path}: token map has {len(new_to_old)} entries but the target vocab_size is {target_vocab}")
    return torch.tensor(new_to_old, dtype=torch.long)


def width_scores(metric: str, source: Source, layers: list[int], target: ModelConfig,
                 calibration: Calibration | None, vocab: torch.Tensor | None, seed: int,
                 learn_steps: int, micro_rows: int) -> WidthScores:
    """Dispatch on `--width`."""
    if metric in ("l1", "l2"):
        return magnitude_scores(source, layers, int(metric[1]), vocab)
    if metric == "random":
        return random_scores(source.config, layers, seed)
    ids = calibration.ids
    if metric == "activation":
        return activation_scores(source, layers, ids, micro_rows)
    if metric == "taylor":
        return taylor_scores(source, layers, ids, micro_rows, vocab)
    return learnable_scores(source, layers, ids, target, steps=learn_steps, micro_rows=micro_rows, seed=seed)


def build_plan(scores: WidthScores, source: Source, target: ModelConfig, layers: list[int],
               vocab: torch.Tensor | None) -> KeepPlan:
    """Turn scores into kept indices (GQA-consistent heads, top neurons, top hidden channels)."""
    cfg = source.config
    shortcuts = shortcut_magnitudes(source, layers) if target.aug_shortcuts else {}
    kept = []
    for index in layers:
        heads, kv_heads = choose_heads(scores.heads[index], scores.kv_heads[index], cfg, target)
        dims = [top_indices(s, target.aug_shortcut_dim) for s in shortcuts.get(index, [])[:target.aug_shortcuts]]
        kept.append(LayerKeep(index, heads, kv_heads, top_indices(scores.ffn[index], target.intermediate_size), dims))
    plan = KeepPlan(cfg, target, top_indices(scores.hidden, target.hidden_size), kept, vocab)
    plan.notes.extend(source.notes + _option_notes(cfg, target))
    return plan


def _option_notes(source: ModelConfig, target: ModelConfig) -> list[str]:
    notes = []
    dropped = [p for p in source.biased_projections if p not in target.biased_projections]
    zeroed = [p for p in target.biased_projections if p not in source.biased_projections]
    if dropped:
        notes.append(f"source {'/'.join(dropped)} biases dropped: the target has none")
    if zeroed:
        notes.append(f"target {'/'.join(zeroed)} biases set to zero: the source has none")
    if source.series_terms and not target.series_terms:
        notes.append("source series-informed activation dropped: the target uses plain SiLU")
    if source.aug_shortcuts > target.aug_shortcuts:
        notes.append(f"{source.aug_shortcuts - target.aug_shortcuts} augmented shortcut(s) per layer dropped")
    if target.tie_embeddings and not source.tie_embeddings:
        notes.append("target ties embeddings: the output head takes the input embedding's rows")
    return notes


# Numbers the inherited weights were trained with: a different RoPE base rotates every inherited
# q/k pair by the wrong angle (measured on SmolLM2-135M, rope_theta 1e5 -> 1e4: the student starts
# far worse than with the source's base), so the student keeps the source's values.
SOURCE_NUMERICS = ("rope_theta", "norm_eps")


def keep_source_numerics(source: ModelConfig, target: ModelConfig) -> tuple[ModelConfig, list[str]]:
    """`target` with the source's RoPE base and norm epsilon, and a note per value that changed."""
    changed = {key: getattr(source, key) for key in SOURCE_NUMERICS if getattr(source, key) != getattr(target, key)}
    notes = [f"{key}: source {value}, target config {getattr(target, key)} (source's kept: the inherited "
             f"weights were trained with it)" for key, value in changed.items()]
    return target.replace(**changed), notes


def gather_target(source: Source, plan: KeepPlan, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The target state dict, one source layer in memory at a time, in the model's name order."""
    convert = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    parts = {}
    for new_index, keep in enumerate(tqdm(plan.layers, desc="gather layers", unit="layer")):
        for name, t in prune_layer(source.layer(keep.source_layer), keep, plan).items():
            parts[f"layers.{new_index}.{name}"] = convert(t)
        source.release()
    globals_ = prune_globals(source.tensor("tok_embeddings.weight"), source.tensor("output.weight"),
                             source.tensor("norm.weight"), plan, release=source.release)
    parts.update({k: convert(v) for k, v in globals_.items()})
    source.release()
    order = parameter_shapes(plan.target)
    check_state_dict(parts, order, source="inherited target")
    return {name: parts[name] for name in order}


def _check_choices(layers: str, width: str, dtype: str, calib: Any) -> None:
    if width not in WIDTH_METRICS:
        raise UserError(f"--width {width!r}: choose one of {', '.join(WIDTH_METRICS)}")
    parse_dtype(dtype, keep=True)  # a bad --dtype fails before any work
    if calib is None and (width in CALIBRATED_METRICS or layers == "block-influence"):
        flag, value = ("--width", width) if width in CALIBRATED_METRICS else ("--layers", layers)
        default = " (the default)" if value in (DEFAULT_WIDTH, DEFAULT_LAYERS) else ""
        raise UserError(f"{flag} {value}{default} needs calibration data: pass --calib (a tokenized folder, or jsonl "
                        "text in the source's tokenizer), or --width random --layers first-last to inherit without data")
    if is_explicit_list(layers) and not any(ch.isdigit() for ch in layers):
        raise UserError(f"--layers {layers!r}: choose one of {', '.join(LAYER_STRATEGIES)} or list indices")


def inherit(src: str | Path, target: str | ModelConfig, dst: str | Path, layers: str = DEFAULT_LAYERS,
            width: str = DEFAULT_WIDTH, calib: str | Path | None = None, calib_tokens: int = DEFAULT_CALIB_TOKENS,
            calib_seq_len: int = 512, token_map: str | Path | None = None, seed: int = 0,
            force: bool = False, src_config: str | ModelConfig | None = None, dtype: str = "source",
            learn_steps: int = 300, micro_rows: int = 4, calib_tokenizer: str | Path | None = None) -> Path:
    """Build the target's starting weights out of `src` and write them to `dst`.

    Args:
        src: InternEvo checkpoint folder or Hugging Face LLaMA-family folder.
        target: preset name, InternEvo config file, or ModelConfig.
        dst: output folder (model_tp0_pp0.pt, model_config.json, manifest.json,
            inherit_report.json, layer_importance.png); refused if it exists unless `force`.
        layers: first-last, uniform, block-influence, or comma-separated source layer indices
            (the defaults, `rethinktiny.inherit.DEFAULT_*`, are the command line's).
        width: l1, l2, activation, taylor, learnable or random; all but l1/l2/random need `calib`.
        calib: InternEvo tokenized folder, or jsonl text file tokenized with the source's tokenizer, for
            calibration (activation/taylor/learnable/block-influence; when given, block influence is
            also measured for the report).
        calib_tokens: calibration tokens (whole rows of `calib_seq_len`).
        calib_seq_len: tokens per calibration row.
        token_map: token_map.json (new id i takes old row token_map[i]); calibration data is then
            read as new-tokenizer ids.
        seed: calibration document order, learnable row order, random scores.
        force: replace an existing `dst`.
        src_config: shape of an InternEvo source without a model config file.
        dtype: output dtype (see `rethinktiny.dtypes`); source (or auto) keeps the source's.
        learn_steps: optimisation steps of the learnable masks.
        micro_rows: calibration rows per forward/backward call (bounds attention memory).
        calib_tokenizer: tokenizer for a text `calib` (default: the one next to the source,
            `rethinktiny.tokenizer.find_tokenizer`).
    Returns:
        `dst`.
    """
    check_writable(dst, force)
    _check_choices(layers, width, dtype, calib)
    source = open_source(src, resolve_target(src_config) if src_config is not None else None)
    cfg = source.config
    target_cfg, numerics_notes = keep_source_numerics(cfg, resolve_target(target))
    vocab = read_token_map(token_map, cfg.vocab_size, target_cfg.vocab_size) if token_map else None
    check_target_fits(cfg, target_cfg, token_map_given=vocab is not None)
    if is_explicit_list(layers):
        parse_layer_list(layers, cfg.num_layers, target_cfg.num_layers)  # fail before calibration work
    calib_tokenizer = calib_tokenizer or find_tokenizer(source.path, src)
    calibration = (calibration_batches(calib, calib_tokens, calib_seq_len, seed, cfg.vocab_size, vocab,
                                       calib_tokenizer) if calib is not None else None)
    influence = block_influence(source, calibration.ids, micro_rows) if calibration is not None else None
    kept_layers = choose_layers(layers, cfg.num_layers, target_cfg.num_layers, influence)
    scores = width_scores(width, source, kept_layers, target_cfg, calibration, vocab, seed, learn_steps, micro_rows)
    plan = build_plan(scores, source, target_cfg, kept_layers, vocab)
    plan.notes.extend(numerics_notes)
    args = dict(src=str(src), target=target if isinstance(target, str) else target_cfg.to_dict(), dst=str(dst),
                layers=layers, width=width, calib=str(calib) if calib else None, calib_tokens=calib_tokens,
                calib_seq_len=calib_seq_len, token_map=str(token_map) if token_map else None, dtype=dtype,
                learn_steps=learn_steps, micro_rows=micro_rows,
                calib_tokenizer=(str(calib_tokenizer) if calib_tokenizer and calib is not None
                                 and is_text_calibration(calib) else None))
    with output_dir(dst, force) as tmp:
        state = gather_target(source, plan, parse_dtype(dtype, keep=True))
        save_model_only(tmp, state, target_cfg)
        del state
        report = build_report(plan, scores, layers, influence, source.describe(),
                              calibration.describe() if calibration else None,
                              str(token_map) if token_map else None)
        write_report(tmp, report)
        plot_layer_importance(tmp / PLOT_FILE, cfg.num_layers, kept_layers, influence,
                              f"{source.path.name}: {cfg.num_layers} -> {target_cfg.num_layers} layers ({layers})")
        write_manifest(tmp, "inherit", args, inputs=_manifest_inputs(source, target, token_map, calib), seed=seed)
    return Path(dst)


def _manifest_inputs(source: Source, target: Any, token_map: Any, calib: Any) -> dict[str, Any]:
    inputs = {"src": source.path, "token_map": token_map, "calib": calib}
    if isinstance(target, str) and Path(target).is_file():
        inputs["target"] = target
    return inputs
