"""``python -m detector.cli`` (and ``torchrun -m detector.cli``): the ``detector`` command."""

import sys

from detector.cli import main

sys.exit(main())
