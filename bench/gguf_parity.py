"""llama.cpp vs transformers on our exports: logits, tokenizer ids and decode speed.

Needs llama-cpp-python built from its sdist (no prebuilt wheels are reachable here; about 20-60
minutes on two shared cores). Build once, cached:

    .venv/bin/pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d ~/.cache/rethinktiny/llama-cpp-sdist
    nice -n 15 env CMAKE_BUILD_PARALLEL_LEVEL=2 .venv/bin/pip wheel --no-deps \\
        ~/.cache/rethinktiny/llama-cpp-sdist/llama_cpp_python-0.3.36.tar.gz -w ~/.cache/rethinktiny/llama-cpp-wheel
    flock /tmp/pip.lock .venv/bin/pip install -c /work/constraints.txt ~/.cache/rethinktiny/llama-cpp-wheel/llama_cpp_python-*.whl

Then `.venv/bin/python bench/gguf_parity.py [--types f32,f16,q8_0] [--big] [--repack]` (by default
llama.cpp's weight repacking is off: its AMX repack of Q8_0 crashes this build on this CPU). For the tiny model (the `tiny` preset of configs/tiny_cpu.py,
random weights scaled so that the next token depends on context, the bundled sample's tokenizer),
it exports one HF folder (float32) and GGUF f32/f16/q8_0 files with rethinktiny's converters and
reports, per GGUF type: max |logit difference| and argmax agreement against transformers over the
first --docs held-out documents (each `<s>` + its tokens, cut to the context length), tokenizer
id agreement over every held-out document (llama.cpp's tokenize vs SentencePiece), and greedy
decode tokens/s on one thread (llama.cpp vs transformers with its KV cache). `--big` adds a random
pangu_pi_1b_pro-shaped model (f16 and q8_0; decode speed and logits on one document).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rethinktiny.arch.llama_cpp_speed import load_llama  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SDIST = Path.home() / ".cache/rethinktiny/llama-cpp-sdist"


def _need_llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        sys.exit("error: llama_cpp is not installed; build it from the sdist as this file's docstring says")
    return llama_cpp


def make_checkpoint(folder: Path, preset: str, vocab: int, seq_len: int, scale: float, dtype: torch.dtype):
    from rethinktiny.checkpoint import save_model_only
    from rethinktiny.config import get_preset
    from rethinktiny.convert.context_length import CONFIG_TEXT_FILE
    from rethinktiny.model import PanGuPi

    cfg = dataclasses.replace(get_preset(preset), vocab_size=vocab)
    torch.manual_seed(0)
    model = PanGuPi(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(scale)
    save_model_only(folder, {k: v.to(dtype) for k, v in model.state_dict().items()}, cfg)
    torch.save(f"data = dict(seq_len={seq_len})\n", folder / CONFIG_TEXT_FILE)
    return cfg


def compare_with_llama_cpp_converter(hf_folder: Path, ours: Path, work: Path) -> dict | None:
    """Run the sdist's vendored `convert_hf_to_gguf.py` (llama.cpp's own converter) on the HF
    export (f32) and compare its tensors and metadata with our f32 GGUF; None without the sdist."""
    import subprocess
    import tarfile

    import gguf

    sdist = next(SDIST.glob("llama_cpp_python-*.tar.gz"), None)
    if sdist is None:
        return None
    src = work / "llama_cpp_src"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name and (
            m.name.endswith("convert_hf_to_gguf.py") or "/gguf-py/" in m.name or "/conversion/" in m.name)]
        tar.extractall(src, members=members, filter="data")
    script = next(src.rglob("convert_hf_to_gguf.py"))
    out = work / "reference_f32.gguf"
    subprocess.run([sys.executable, str(script), str(hf_folder), "--outtype", "f32", "--outfile", str(out)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")})
    mine, ref = gguf.GGUFReader(ours), gguf.GGUFReader(out)
    a, b = {t.name: t for t in mine.tensors}, {t.name: t for t in ref.tensors}
    same = sorted(n for n in a if n in b and np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data)))
    fa = {k: f.contents() for k, f in mine.fields.items() if not k.startswith("GGUF.")}
    fb = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    differing = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    return {"tensors_identical": f"{len(same)}/{len(b)}", "same_tensor_names": set(a) == set(b),
            "metadata_keys_differing": differing}


def hf_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def decode_speed_hf(model, prompt: list[int], new: int) -> float:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    return new / (time.perf_counter() - start)


def decode_speed_llama(llm, prompt: list[int], new: int) -> float:
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for _ in range(new):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    return new / (time.perf_counter() - start)


def run(preset: str, tokenizer: Path, texts: list[str], outtypes: list[str], docs: int, new_tokens: int,
        seq_len: int, scale: float, work: Path, check_tokenizer: bool, repack: bool = False) -> dict:
    import sentencepiece as spm
    from transformers import AutoModelForCausalLM

    from rethinktiny.convert.export import to_hf
    from rethinktiny.convert.gguf_export import to_gguf

    llama_cpp = _need_llama_cpp()
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    big = preset != "tiny"
    cfg = make_checkpoint(work / "ckpt", preset, sp.get_piece_size(), seq_len, scale,
                          torch.bfloat16 if big else torch.float32)
    to_hf(work / "ckpt", work / "hf", tokenizer=tokenizer, dtype="float32", progress=False)
    hf = AutoModelForCausalLM.from_pretrained(str(work / "hf"), local_files_only=True).eval()
    ctx = min(seq_len, 512)
    prompts = [[sp.bos_id()] + sp.encode(t)[:ctx - 1] for t in texts[:docs]]
    result = {"preset": preset, "repack": repack, "params": sum(p.numel() for p in hf.parameters()), "docs": len(prompts),
              "positions": sum(len(p) for p in prompts), "types": {}}
    torch.set_num_threads(1)
    reference = [hf_logits(hf, ids) for ids in prompts]
    result["transformers_tokens_per_s"] = decode_speed_hf(hf, prompts[0][:16], new_tokens)
    for outtype in outtypes:
        path = to_gguf(work / "ckpt", work / f"gguf_{outtype}", tokenizer, outtype=outtype, progress=False)
        llm = load_llama(path, ctx + new_tokens + 16, threads=1, repack=repack, logits_all=True)
        deltas, agree = [], 0
        for ids, want in zip(prompts, reference):
            got = llama_logits(llm, ids)
            deltas.append(float(np.abs(got - want).max()))
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
        row = {"file_mib": round(path.stat().st_size / 2**20, 1), "max_abs_logit_delta": max(deltas),
               "argmax_agree": agree, "positions": result["positions"],
               "llama_cpp_tokens_per_s": decode_speed_llama(llm, prompts[0][:16], new_tokens),
               "bos_added_by_llama_cpp": llm.tokenize(b"hello", add_bos=True)[:1] == [sp.bos_id()]}
        if check_tokenizer and outtype == outtypes[0]:
            same = sum(llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) == sp.encode(t) for t in texts)
            result["tokenizer_identical_docs"] = f"{same}/{len(texts)}"
        if outtype == "f32" and not big:
            row["vs_llama_cpp_converter"] = compare_with_llama_cpp_converter(work / "hf", path, work)
        result["types"][outtype] = row
        print(outtype, json.dumps(row), flush=True)
        del llm
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=str(REPO / "data/sample/tokenizer/tokenizer.model"))
    parser.add_argument("--data", default=str(REPO / "data/sample/valid.jsonl"))
    parser.add_argument("--docs", type=int, default=8, help="documents for the logit comparison")
    parser.add_argument("--new-tokens", type=int, default=64, help="greedy tokens timed per decode run")
    parser.add_argument("--types", default="f32,f16,q8_0", help="GGUF types for the tiny model")
    parser.add_argument("--repack", action="store_true",
                        help="let llama.cpp repack weights into its extra (AMX) buffers (crashes for q8_0 tiny here)")
    parser.add_argument("--big", action="store_true", help="also a random pangu_pi_1b_pro-shaped model")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    texts = [json.loads(line)["text"] for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line]
    results = []
    with tempfile.TemporaryDirectory(prefix="gguf_parity_") as tmp:
        (Path(tmp) / "tiny").mkdir()
        results.append(run("tiny", Path(args.tokenizer), texts, args.types.split(","), args.docs,
                           args.new_tokens, 256, 4.0, Path(tmp) / "tiny", check_tokenizer=True, repack=args.repack))
        print(json.dumps(results[-1], indent=1), flush=True)
    if args.big:
        with tempfile.TemporaryDirectory(prefix="gguf_parity_big_") as tmp:
            results.append(run("pangu_pi_1b_pro", Path(args.tokenizer), texts, ["f16", "q8_0"], 1,
                               min(args.new_tokens, 16), 2048, 1.0, Path(tmp), check_tokenizer=False,
                               repack=args.repack))
            print(json.dumps(results[-1], indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
