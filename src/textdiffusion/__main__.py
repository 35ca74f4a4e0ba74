"""``python -m textdiffusion ...`` (and ``torchrun -m textdiffusion ...``): the command line."""

import sys

from textdiffusion.apps.cli import main

sys.exit(main())
