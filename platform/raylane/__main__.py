"""`python -m raylane ...` is the `raylane` command."""

import sys

from raylane.cli import main

sys.exit(main())
