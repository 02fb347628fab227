"""``python -m hwprune``, as ``torchrun -m hwprune recover ...`` runs it."""

import sys

from hwprune.cli import main

sys.exit(main())
