"""rethinktiny.configfiles: storage paths of InternEvo configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from rethinktiny.configfiles.load import local_path
from rethinktiny.errors import UserError


def test_local_path_strips_the_storage_prefix():
    assert local_path("local:/ckpt/a") == Path("/ckpt/a") and local_path("local:rel/a") == Path("rel/a")
    assert local_path("/plain/folder") == Path("/plain/folder") and local_path("rel") == Path("rel")
    assert local_path(None) is None and local_path("") is None
    # a colon later in a plain path is no storage prefix
    assert local_path("/data/a:b") == Path("/data/a:b")


def test_other_storage_is_none_or_an_error_naming_the_key():
    assert local_path("boto3:s3://bucket/ckpt") is None
    with pytest.raises(UserError, match=r"ckpt\.load_ckpt_info\.path 'oss2:bucket/x': only local folders"):
        local_path("oss2:bucket/x", key="ckpt.load_ckpt_info.path")


@pytest.mark.parametrize("name", ["LLM1B.py", "LLM1.5B.py"])
def test_shipped_configs_are_what_their_header_command_writes(name, tmp_path):
    """configs/LLM1B.py and LLM1.5B.py are `config export` output: rerunning the exact command
    recorded in each file's header (same relative --dst, in an empty folder) writes the same bytes."""
    import shlex
    import subprocess
    import sys

    from tests.conftest import REPO

    shipped = (REPO / "configs" / name).read_text()
    prefix = "# Written by: rethinktiny "
    recorded = [line[len(prefix):] for line in shipped.splitlines() if line.startswith(prefix)]
    assert len(recorded) == 1, f"{name}: expected one '{prefix}...' header line"
    args = shlex.split(recorded[0])
    assert args[:2] == ["config", "export"] and args[args.index("--dst") + 1] == f"configs/{name}"
    (tmp_path / "configs").mkdir()
    result = subprocess.run([sys.executable, "-m", "rethinktiny", *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    written = (tmp_path / "configs" / name).read_text()
    assert written == shipped, f"configs/{name} differs from its header command's output; rerun that command"


def test_config_export_never_writes_over_its_own_input(tmp_path):
    """`config export --dst` naming its own --token-map is refused even with --force, and the input
    keeps its bytes."""
    from rethinktiny.cli import main

    token_map = tmp_path / "token_map.json"
    token_map.write_text('{"old_to_new": {}}')
    code = main(["config", "export", "--preset", "tiny", "--distill", str(tmp_path / "teacher"),
                 "--token-map", str(token_map), "--dst", str(token_map), "--force"])
    assert code == 2
    assert token_map.read_text() == '{"old_to_new": {}}'
