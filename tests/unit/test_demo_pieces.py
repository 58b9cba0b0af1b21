"""Pieces of `make demo` that need no training: the layer plot's axis, the held-out subset, tied students."""

import json
import subprocess
import sys

from rethinktiny.demo.pipeline import document_subset
from rethinktiny.inherit.report import needs_log_scale, plot_layer_importance

# SmolLM2-135M-Instruct's block influence, measured by `rethinktiny inherit` on the bundled sample
SMOLLM2 = [0.9675, 0.1867, 0.0466, 0.0487, 0.0503, 0.0428, 0.0408, 0.0412, 0.0482, 0.0399, 0.0437, 0.0412, 0.0296,
           0.0250, 0.0225, 0.0277, 0.0298, 0.0231, 0.0384, 0.0442, 0.0633, 0.0456, 0.0478, 0.0663, 0.1795, 0.0378,
           0.0377, 0.0534, 0.0587, 0.3741]


def test_one_dominant_layer_gets_a_log_axis_and_an_even_profile_a_linear_one(tmp_path):
    assert needs_log_scale(SMOLLM2) and not needs_log_scale([0.3, 0.2, 0.25, 0.1, 0.15, 0.4])
    assert not needs_log_scale([0.0, 0.0])
    for influence in (SMOLLM2, None):
        png = plot_layer_importance(tmp_path / "plot.png", 30, [0, 1, 2, 29], influence, "SmolLM2")
        assert png.stat().st_size > 5000


def test_document_subset_takes_every_kth_document(tmp_path):
    src = tmp_path / "valid.jsonl"
    src.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(10)) + "\n")
    document_subset(src, tmp_path / "sub.jsonl", 3)
    assert [json.loads(x)["text"] for x in (tmp_path / "sub.jsonl").read_text().splitlines()] == ["doc 0", "doc 3", "doc 6"]


def test_config_export_ties_embeddings_on_request(tmp_path):
    def export(*flags):
        out = subprocess.run([sys.executable, "-m", "rethinktiny", "config", "export", "--preset", "tiny", *flags],
                             capture_output=True, text=True, check=True).stdout
        return [line.strip() for line in out.splitlines() if line.strip().startswith("tie_embeddings=")]

    assert export("--tie-embeddings") == ["tie_embeddings=True,"]
    assert export() == export("--no-tie-embeddings") == ["tie_embeddings=False,"]
