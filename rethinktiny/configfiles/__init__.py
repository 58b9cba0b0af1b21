"""InternEvo Python config files: `load` reads them (with `--set` overrides), `export` writes them.

The model shape itself is `rethinktiny.config.ModelConfig`; these modules only translate between
that dataclass (plus training options) and the `model=dict(...)`, `data=dict(...)` files InternEvo
executes.
"""
