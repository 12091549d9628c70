"""``python -m fgvc`` (and ``torchrun -m fgvc``) run the CLI."""

import sys

from .cli import main

sys.exit(main())
