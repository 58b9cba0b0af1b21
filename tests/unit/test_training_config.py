"""TrainingConfig.from_file: one load with the --set overrides, every check before a rank starts
(known keys with did-you-mean, types and ranges, literal --set values, model shape, data), and the
resumed metrics file holding each step once."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from pathlib import Path

import pytest

from rethinktiny.config import get_preset
from rethinktiny.configfiles.export import TrainOptions, export_config
from rethinktiny.configfiles.load import load_config_file, parse_override
from rethinktiny.configfiles.training import KNOWN_KEYS, OUR_MODEL_KEYS, TrainingConfig
from rethinktiny.data.tokenized import write_documents
from rethinktiny.errors import UserError

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny_cpu.py"


def _config(tmp_path: Path, extra: str = "", train_folder: str | None = None) -> Path:
    """configs/tiny_cpu.py with `extra` appended (and a train folder, default none)."""
    path = tmp_path / "cfg.py"
    path.write_text(TINY.read_text() + f"\ndata['train_folder'] = {train_folder!r}\n" + extra)
    return path


def _error(path, overrides=(), **kwargs) -> str:
    with pytest.raises(UserError) as info:
        TrainingConfig.from_file(path, overrides, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message  # one line
    return message


@pytest.mark.parametrize("extra, key, nearest", [
    ("model['hiden_sise'] = 64", "model.hiden_sise", "model.hidden_size"),
    ("data['totl_steps'] = 5", "data.totl_steps", "data.total_steps"),
    ("parallel['zero1']['sise'] = 2", "parallel.zero1.sise", "parallel.zero1.size"),
    ("model_typ = 'PANGU_PI_PRO'", "model_typ", "model_type"),
])
def test_unknown_key_in_the_file_names_file_key_and_nearest(tmp_path, extra, key, nearest):
    path = _config(tmp_path, extra)
    message = _error(path)
    assert message.startswith(f"{path}: unknown config key {key} (did you mean {nearest}?)"), message
    assert "--allow-unknown-keys" in message


def test_unknown_key_from_set_names_the_item(tmp_path):
    message = _error(_config(tmp_path), ["data.micro_bz=4"])
    assert "--set data.micro_bz=4: unknown config key data.micro_bz (did you mean data.micro_bsz?)" in message


def test_whole_unknown_section(tmp_path):
    message = _error(_config(tmp_path, "trainer = dict(steps=5, lr=1.0)"))
    assert "unknown config key trainer" in message and "trainer.steps" not in message


def test_allow_unknown_keys_keeps_them(tmp_path):
    path = _config(tmp_path, "data['totl_steps'] = 5\ntrainer = dict(steps=5)")
    cfg = TrainingConfig.from_file(path, ["model.my_note='x'"], allow_unknown_keys=True)
    assert cfg.raw["trainer"] == {"steps": 5} and cfg.data["totl_steps"] == 5 and cfg.raw["model"]["my_note"] == "x"
    assert "2 more unknown key(s)" in _error(path, ["model.my_note='x'"])


def test_constants_and_internevo_model_sections_are_not_checked(tmp_path):
    # upper-case names are the file's own constants; InternEvo's model types take their own keys
    TrainingConfig.from_file(_config(tmp_path, "MY_CONSTANT = 3"))


@pytest.mark.parametrize("override, message", [
    ("data.seq_len=-256", "data.seq_len must be a positive integer, got -256"),
    ("data.micro_bsz=2.0", "data.micro_bsz must be a positive integer, got 2.0"),
    ("data.micro_num=0", "data.micro_num must be a positive integer, got 0"),
    ("data.total_steps='30'", "data.total_steps must be a positive integer, got '30'"),
    ("data.valid_every=-1", "data.valid_every must be an integer >= 0, got -1"),
    ("adam.lr='1e-3'", "adam.lr must be a number >= 0, got '1e-3'"),
    ("adam.adam_beta2=1.0", "adam.adam_beta2 must be a number in [0, 1), got 1.0"),
    ("lr_scheduler.warmup_ratio=1.5", "lr_scheduler.warmup_ratio must be a number in [0, 1], got 1.5"),
    ("ckpt.auto_resume=1", "ckpt.auto_resume must be True or False, got 1"),
    ("launch.nproc_per_node=0", "launch.nproc_per_node must be a positive integer, got 0"),
    ("loss=0", "loss must be a dict(...), got int"),
    ("model.dtype='torch.float64'", "unknown dtype 'torch.float64'"),
    ("model.num_attention_heads=3", "not divisible by num_attention_heads 3"),
    ("model.series_terms=2", "model_type PANGU_PI_PRO has no series activation"),
])
def test_types_and_ranges(tmp_path, override, message):
    path = _config(tmp_path)
    got = _error(path, [override])
    assert got.startswith(f"{path}: --set {override}: ") or got.startswith(f"{path}: --set {override}"), got
    assert message in got, got


def test_bad_value_in_the_file_names_the_file(tmp_path):
    path = _config(tmp_path, "data['seq_len'] = -1")
    assert _error(path) == f"{path}: data.seq_len must be a positive integer, got -1"


def test_set_values_are_literals_unless_quoted(tmp_path):
    path = _config(tmp_path)
    message = _error(path, ["data.micro_bsz=two"])
    assert message == ("--set data.micro_bsz=two: 'two' is not a Python literal (number, True/False/None, quoted "
                       "string, list, tuple, dict(...)); quote a string: --set 'data.micro_bsz=\"two\"'")
    assert "not a Python literal" in _error(path, ["data.total_steps=3O"])
    cfg = TrainingConfig.from_file(path, ['JOB_NAME="two words"', "ckpt.save_ckpt_folder=local:/tmp/run",
                                          "ckpt.load_ckpt_info=dict(path='local:/a', content=('model',))",
                                          "hybrid_zero_optimizer.reduce_bucket_size=512 * 1024 * 1024",
                                          "model.dtype=torch.float32", "data.valid_folder=/data/valid"])
    assert cfg.raw["JOB_NAME"] == "two words" and cfg.raw["ckpt"]["save_ckpt_folder"] == "local:/tmp/run"
    assert cfg.raw["ckpt"]["load_ckpt_info"] == {"path": "local:/a", "content": ("model",)}
    assert cfg.raw["hybrid_zero_optimizer"]["reduce_bucket_size"] == 512 * 1024 * 1024
    assert cfg.dtype == "float32" and cfg.data["valid_folder"] == "/data/valid"
    # recorded items of older runs may still be read leniently
    assert parse_override("data.sampler=multi_round", strict=False) == (["data", "sampler"], "multi_round")


def test_fields(tmp_path):
    cfg = TrainingConfig.from_file(_config(tmp_path), ["loss.label_smoothing=0.1", "data.total_steps=7"])
    assert cfg.model == get_preset("tiny") and cfg.model_type == "PANGU_PI_PRO" and cfg.nproc_hint == 2
    assert cfg.label_smoothing == 0.1 and cfg.total_steps == 7 and cfg.dtype == "float32"
    assert cfg.overrides == ["loss.label_smoothing=0.1", "data.total_steps=7"] and cfg.section("adam")["lr"] == 2e-3
    assert TrainingConfig.from_file(_config(tmp_path), ["model.dtype='torch.tf32'"]).dtype == "tf32"


def test_data_folders_are_verified(tmp_path):
    folder = tmp_path / "data"
    write_documents(folder / "en" / "a.bin", [[1, 2, 3], [4, 5, 6, 7]])
    path = _config(tmp_path, train_folder=str(folder))
    TrainingConfig.from_file(path)
    with open(folder / "en" / "a.bin", "r+b") as f:
        f.truncate(8)
    assert "a.bin" in _error(path)
    assert TrainingConfig.from_file(path, check_data=False).data["train_folder"] == str(folder)
    message = _error(path, [f"data.train_folder={tmp_path / 'nope'}"])
    assert "nope" in message


def test_a_config_that_raises_is_one_line(tmp_path):
    path = _config(tmp_path, "x = undefined_name + 1")
    message = _error(path)
    assert message.startswith(f"{path}:") and "NameError" in message and "undefined_name" in message
    assert message.split(":")[1].isdigit()


SHIPPED = sorted((REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_passes(config):
    cfg = TrainingConfig.from_file(config, check_data=False)
    assert cfg.model is not None and cfg.data["seq_len"] > 0


@pytest.mark.parametrize("preset, opts", [
    ("pangu_pi_1b_pro", TrainOptions()),
    ("pangu_pi_1.5b_pro", TrainOptions(dtype="torch.tf32", checkpoint=0.5)),
    ("pangu_pi_7b", TrainOptions(cpu_ranks=2)),
    ("tiny", TrainOptions(cpu_ranks=2, inherit="/ckpt/inherited", resample="/r", train_folder="/d",
                          valid_folder="/v")),
])
def test_every_exported_config_passes(tmp_path, preset, opts):
    path = export_config(tmp_path / "exported.py", preset=preset, opts=opts)
    cfg = TrainingConfig.from_file(path, check_data=False)
    assert cfg.model == get_preset(preset)


# ---- the known keys cover what InternEvo reads ------------------------------------------------------

def _config_reads(package: Path) -> set[str]:
    """Dotted `gpc.config` paths read anywhere under `package` (attribute, subscript, .get, `in`,
    get_config_value), following local aliases (`data = gpc.config.data`) and the parameters InternEvo
    names after a section (`data_cfg`, `zero_cfg`, `grad_scal_cfg`, `ckpt_config`)."""
    params = {"data_cfg": ("data",), "grad_scal_cfg": ("grad_scaler",), "zero_cfg": ("hybrid_zero_optimizer",),
              "ckpt_config": ("ckpt",), "load_ckpt_info": ("ckpt", "load_ckpt_info")}
    methods = {"get", "_add_item", "pop", "setdefault", "update", "keys", "items", "values", "copy"}
    found: set[tuple[str, ...]] = set()

    def key_of(node) -> str | None:
        return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None

    def walk(node, scope: dict) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            scope = {**scope, **{a.arg: params[a.arg] for a in node.args.args + node.args.kwonlyargs if a.arg in params}}
        for child in ast.iter_child_nodes(node):
            walk(child, scope)
            if isinstance(child, ast.Assign) and resolve(child.value, scope) is not None:
                for target in child.targets:
                    if isinstance(target, ast.Name):
                        scope[target.id] = resolve(child.value, scope)
        path = resolve(node, scope)
        if path:
            found.add(path)
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in methods and node.args:
                base = resolve(func.value, scope)
                if base is not None and key_of(node.args[0]):
                    found.add(base + (key_of(node.args[0]),))
            if isinstance(func, ast.Name) and func.id in ("get_config_value", "hasattr", "getattr") and len(node.args) > 1:
                base = resolve(node.args[0], scope)
                if base is not None and key_of(node.args[1]):
                    found.add(base + (key_of(node.args[1]),))
        if isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)) and key_of(node.left):
            base = resolve(node.comparators[0], scope)
            if base is not None:
                found.add(base + (key_of(node.left),))

    def resolve(node, scope) -> tuple[str, ...] | None:
        if isinstance(node, ast.Attribute) and node.attr == "config" and getattr(node.value, "id", None) == "gpc":
            return ()
        if isinstance(node, ast.Name):
            return scope.get(node.id)
        if isinstance(node, ast.Attribute) and node.attr not in methods:
            base = resolve(node.value, scope)
            return None if base is None else base + (node.attr,)
        if isinstance(node, ast.Subscript) and key_of(node.slice):
            base = resolve(node.value, scope)
            return None if base is None else base + (key_of(node.slice),)
        return None

    for file in sorted(package.rglob("*.py")):
        walk(ast.parse(file.read_text(encoding="utf-8")), {})
    return {".".join(path) for path in found}


def _known(dotted: str) -> bool:
    node = {**KNOWN_KEYS, "model": OUR_MODEL_KEYS}
    parts = dotted.split(".")
    if parts[0].upper() == parts[0] or parts[0] in ("batch_count", "model_type"):  # constants; set at run time
        return True
    for part in parts:
        if not node:  # below a free-form entry (a string's method, a dict we do not look into)
            return True
        if part not in node:
            return False
        node = node[part]
    return True


def _internevo_packages() -> list[Path]:
    spec = importlib.util.find_spec("internlm")  # finds the package without importing it (seconds)
    packages = [Path(spec.origin).parent] if spec and spec.origin else []
    root = os.environ.get("RETHINKTINY_INTERNEVO_ROOT")  # the newest tree (make test-internevo-newest)
    if root and (Path(root) / "internlm").is_dir():
        packages.append(Path(root) / "internlm")
    return packages


@pytest.mark.parametrize("package", _internevo_packages(), ids=str)
def test_known_keys_cover_what_internevo_reads(package):
    reads = _config_reads(package)
    assert len(reads) > 80, f"{package}: the AST walk found only {len(reads)} config reads"
    assert {"data.seq_len", "ckpt.load_ckpt_info", "grad_scaler.fp16.initial_scale"} <= reads
    missing = sorted(key for key in reads if not _known(key))
    assert not missing, f"{package} reads config keys TrainingConfig does not know: {missing}"


def test_our_model_keys_cover_what_our_builders_read():
    """Every `model=dict(...)` key rethinktiny.config.from_internevo and our InternEvo builder read."""
    reads = set()
    for file in ("rethinktiny/config.py", "rethinktiny/internevo/builder.py"):
        for node in ast.walk(ast.parse((REPO / file).read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and getattr(node.func.value, "id", None) in ("model", "entry") and node.args
                    and isinstance(node.args[0], ast.Constant)):
                reads.add(node.args[0].value)
            if (isinstance(node, ast.Subscript) and getattr(node.value, "id", None) in ("model", "entry")
                    and isinstance(node.slice, ast.Constant)):
                reads.add(node.slice.value)
    assert {"hidden_size", "intermediate_size", "qk_interleaved"} <= reads
    assert not reads - set(OUR_MODEL_KEYS), sorted(reads - set(OUR_MODEL_KEYS))


# ---- a resumed run's metrics file -------------------------------------------------------------------

def test_resumed_step_log_holds_each_step_once(tmp_path):
    from rethinktiny.internevo.train import StepLog

    metrics = tmp_path / "train_metrics.jsonl"
    log = StepLog(tmp_path, tokens_per_step=8)
    for step in range(1, 6):
        log.write(step, 1.0, 1e-3, 0.5, False)
    with open(metrics, "a") as f:
        f.write('{"step": 6, "lo')  # killed while writing step 6
    resumed = StepLog(tmp_path, tokens_per_step=8, start_step=3)  # the last checkpoint was step 3
    for step in range(4, 7):
        resumed.write(step, 2.0, 1e-3, 0.5, False)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    assert not list(tmp_path.glob(".*tmp*"))


def test_config_keys_of_loaded_file_are_the_files(tmp_path):
    """raw is the file after the overrides, as the ranks get it (same dict load_config_file gives)."""
    path = _config(tmp_path)
    assert TrainingConfig.from_file(path).raw == load_config_file(path)
