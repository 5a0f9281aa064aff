"""``python -m kvraft.sim``: see :mod:`kvraft.sim.runner`."""

import sys

from kvraft.sim.runner import main

sys.exit(main())
