"""python -m rethinktiny.demo [flags]: `rethinktiny demo run [flags]` (see `rethinktiny.demo.pipeline`)."""

import sys

from rethinktiny.cli import main

sys.exit(main(["demo", "run", *sys.argv[1:]]))
