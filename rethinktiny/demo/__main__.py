"""python -m rethinktiny.demo: see `rethinktiny.demo.pipeline`."""

import sys

from rethinktiny.demo.pipeline import main

sys.exit(main())
