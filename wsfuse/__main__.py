"""`python -m wsfuse` is the `wsfuse` command."""

import sys

from wsfuse.cli import main

sys.exit(main())
