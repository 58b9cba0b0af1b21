"""Parameter inheritance: prune a large checkpoint into a small model's starting weights."""

# Defaults of `inherit()` and `rethinktiny inherit`, chosen from measurements on a real pretrained
# teacher (SmolLM2-135M-Instruct, bench/real_teacher.py, table in docs/parameter-inheritance.md),
# not on this project's miniature teachers, whose ordering of the metrics did not carry over. Kept
# here, away from torch, so the command line reads them without importing the implementation.
DEFAULT_WIDTH = "activation"
# Block influence is measured whenever calibration data is given, so this layer choice costs nothing extra.
DEFAULT_LAYERS = "block-influence"
DEFAULT_CALIB_TOKENS = 4096
