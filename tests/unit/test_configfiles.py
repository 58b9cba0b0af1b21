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
