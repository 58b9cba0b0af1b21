import sys

from rethinktiny.cli import main

sys.exit(main())
