"""rethinktiny: the recipes of "Rethinking Optimization and Architecture for Tiny Language
Models" (Tang et al., 2024) as tools on top of the InternEvo training framework.

The core (config, model, vocab, inherit, resample, convert, data) is pure torch/numpy. Only
`rethinktiny.internevo` imports `internlm`; it is registered into InternEvo whenever both are
imported, in either order (see `_internevo_hook`).
"""

__version__ = "0.1.0"

from rethinktiny import _internevo_hook  # noqa: E402

_internevo_hook.install()
