"""`python -m lorascope.cli ...` is the `lorascope` command, as `python -m lorascope` is."""

import sys

from lorascope.cli import main

sys.exit(main())
