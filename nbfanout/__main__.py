"""``python -m nbfanout`` is the ``nbfanout`` command."""

import sys

from nbfanout.cli import main

sys.exit(main())
