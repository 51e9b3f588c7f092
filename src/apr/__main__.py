"""`python -m apr ...` (and `torchrun ... -m apr ...`) runs the command line."""

import sys

from apr.commands import main

sys.exit(main())
