"""lm-evaluation-harness 0.4.13 on the default HF export, offline, with the task YAMLs in
tools/lm_eval/ (local json): the documented BOS rule gives exactly one <s> per request.

- rolling loglikelihood with `add_bos_token=False`: lm-eval's own prefix token is the one <s>;
  the total NLL and bits per byte equal `rethinktiny eval ppl --no-eos` at the same window length.
  Without it the tokenizer's <s> comes second and is scored (shown, so the rule is needed).
- multiple choice with default arguments: every context is `<s>` + its tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

from rethinktiny.checkpoint import save_model_only  # noqa: E402
from rethinktiny.config import ModelConfig  # noqa: E402
from rethinktiny.convert.export import to_hf  # noqa: E402
from rethinktiny.evaluate import evaluate_perplexity  # noqa: E402
from rethinktiny.model import PanGuPi  # noqa: E402
from rethinktiny.vocab.spmodel import load_model_proto  # noqa: E402

from tests.conftest import REPO, SAMPLE_VALID  # noqa: E402

LIMIT = 12
CONTEXT = 96  # max_position_embeddings of the export = lm-eval's window length


@pytest.fixture(scope="module")
def export(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("lmeval")
    cfg = ModelConfig(hidden_size=64, num_layers=2, num_attention_heads=4, num_kv_heads=2, intermediate_size=128,
                      vocab_size=len(load_model_proto(tiny_tokenizer).pieces))
    torch.manual_seed(0)
    model = PanGuPi(cfg)
    with torch.no_grad():  # a context-sensitive model, so a missing or extra <s> shows
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    save_model_only(root / "ckpt", model.state_dict(), cfg)
    to_hf(root / "ckpt", root / "hf", tokenizer=tiny_tokenizer, max_position_embeddings=CONTEXT, progress=False)
    return root


def run_lm_eval(root: Path, name: str, tasks: str, model_args: str = "") -> dict[str, list[dict]]:
    """The documented command (see docs/huggingface.md); returns the logged samples per task."""
    out = root / name
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(root / "datasets"),
               TOKENIZERS_PARALLELISM="false")
    lm_eval = shutil.which("lm_eval", path=str(Path(sys.executable).parent)) or "lm_eval"
    command = [lm_eval, "--model", "hf", "--model_args", f"pretrained={root / 'hf'},dtype=float32{model_args}",
               "--tasks", tasks, "--include_path", "tools/lm_eval", "--limit", str(LIMIT), "--device", "cpu",
               "--batch_size", "4", "--output_path", str(out), "--log_samples"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    samples = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["doc_id"])
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    return samples, results


def _model_and_tokenizer(root: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(root / "hf"), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(root / "hf"), local_files_only=True).eval()
    return model, tok


def _logprob(model, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))


def test_rolling_loglikelihood_matches_eval_ppl(export, tmp_path):
    root = export
    samples, results = run_lm_eval(root, "rolling", "rethinktiny_sample_ppl", ",add_bos_token=False")
    rows = samples["rethinktiny_sample_ppl"]
    assert len(rows) == LIMIT
    lm_eval_nll = -sum(float(r["resps"][0][0]) for r in rows)
    texts = [r["doc"]["text"] for r in rows]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    ours = evaluate_perplexity(root / "hf", data, seq_len=CONTEXT, add_eos=False, progress=False)
    assert ours.nll == pytest.approx(lm_eval_nll, rel=1e-5)
    assert ours.bits_per_byte == pytest.approx(results["rethinktiny_sample_ppl"]["bits_per_byte,none"], rel=1e-5)

    # the default (tokenizer adds <s>, lm-eval adds its prefix <s>) doubles it: what the rule avoids.
    # The first window is then [<s>, <s>, t1, ...] scoring the second <s> too.
    doubled, _ = run_lm_eval(root, "rolling_default", "rethinktiny_sample_ppl")
    model, tok = _model_and_tokenizer(root)
    bos, ids = tok.bos_token_id, tok(texts[0], add_special_tokens=False).input_ids
    n = min(len(ids), CONTEXT - 1)
    first_window = _logprob(model, [bos], [bos] + ids[:n])
    if len(ids) <= CONTEXT - 1:  # one window: the logged value is exactly that
        assert float(doubled["rethinktiny_sample_ppl"][0]["resps"][0][0]) == pytest.approx(first_window, rel=1e-4)
    assert -sum(float(r["resps"][0][0]) for r in doubled["rethinktiny_sample_ppl"]) > lm_eval_nll + LIMIT


def test_multiple_choice_contexts_start_with_one_bos(export):
    root = export
    samples, _ = run_lm_eval(root, "choice", "rethinktiny_sample_choice")
    rows = samples["rethinktiny_sample_choice"]
    model, tok = _model_and_tokenizer(root)
    bos = tok.bos_token_id
    checked = differs = 0
    for row in rows:
        for key, resp in zip(sorted(row["arguments"]), row["resps"]):
            context, continuation = row["arguments"][key]["arg_0"], row["arguments"][key]["arg_1"]
            # lm-eval moves a context's trailing whitespace to the continuation before encoding
            stripped = context.rstrip()
            context, continuation = stripped, context[len(stripped):] + continuation
            ctx = tok(context, add_special_tokens=False).input_ids
            whole = tok(context + continuation, add_special_tokens=False).input_ids
            cont = whole[len(ctx):]
            logged = float(resp[0][0])
            assert len(ctx) + len(cont) < CONTEXT  # lm-eval would cut the context from the left
            assert logged == pytest.approx(_logprob(model, [bos] + ctx, cont), rel=1e-4, abs=1e-3)
            differs += abs(logged - _logprob(model, ctx, cont)) > 1e-2
            checked += 1
    assert checked == 2 * len(rows) and len(rows) >= 8 and differs  # without <s> it would not match
