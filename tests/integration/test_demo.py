"""`make demo`'s pipeline at a smaller budget: every artefact exists and is valid."""

import json
import shutil
import subprocess
import sys

import pytest

from rethinktiny.demo import EVALUATED, STEPS

from .helpers import REPO


def _demo(out, *extra, timeout=1800):
    # run outside the checkout: the demo reads only the --sample folder it is given
    return subprocess.run([sys.executable, "-m", "rethinktiny.demo", "--sample", str(REPO / "data" / "sample"),
                           "--out", str(out), "--scale", "smoke", *extra],
                          cwd=out.parent, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = _demo(out)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return out


def test_every_step_has_its_manifest_and_the_report_lists_all_variants(demo_out):
    for name, _ in STEPS:
        manifest = json.loads((demo_out / name / "manifest.json").read_text())
        assert manifest["commands"], name
    report = (demo_out / "report.md").read_text()
    for label, _, _ in EVALUATED:
        assert f"| {label} |" in report
    for png in ("loss_curves.png", "03_vocab/coverage_compact.png", "04_inherit/student/layer_importance.png"):
        assert (demo_out / png).stat().st_size > 1000 and f"]({png})" in report


def test_inherited_student_starts_below_random_init(demo_out):
    def first_loss(folder):
        return json.loads((demo_out / folder / "train_metrics.jsonl").read_text().splitlines()[0])["loss"]

    assert first_loss("06_round1/ckpt") < first_loss("05_random/round1/ckpt")


def test_resampled_folder_trained_and_hf_export_loads(demo_out):
    rows = (demo_out / "09_round2_resampled" / "ckpt" / "train_metrics.jsonl").read_text().splitlines()
    assert len(rows) == 8
    selected = json.loads((demo_out / "08_resample" / "selected" / "manifest.json").read_text())
    assert selected["summary"]["num_selected"] * 2 == selected["summary"]["num_batches"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_out / "10_hf" / "hf")
    tokenizer = AutoTokenizer.from_pretrained(demo_out / "10_hf" / "hf")
    assert model.config.vocab_size == len(tokenizer) == 4000
    assert len(json.loads((demo_out / "10_hf" / "samples.json").read_text())) == 4


def test_rerun_reuses_steps_and_a_failing_step_stops_with_its_own_error(demo_out, tmp_path):
    result = _demo(demo_out, timeout=600)
    assert result.returncode == 0 and result.stdout.count("done earlier, reused") == len(STEPS)
    broken = tmp_path / "broken"
    for name in ("01_data", "02_teacher", "03_vocab"):
        shutil.copytree(demo_out / name, broken / name)
    shutil.rmtree(broken / "02_teacher" / "ckpt")
    result = _demo(broken, timeout=600)
    assert result.returncode == 1
    assert "[demo] failed: inherit:" in result.stderr
    assert "02_teacher/ckpt: source folder not found" in result.stderr  # the inherit command's own message
    assert not (broken / "04_inherit").exists() and not (broken / "05_random").exists()
