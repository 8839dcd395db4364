"""`python -m lorascope ...` is the `lorascope` command."""

import sys

from lorascope.cli import main

sys.exit(main())
