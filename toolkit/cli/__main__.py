"""``python -m toolkit.cli``: the ``slmops`` command."""

import sys

from toolkit.cli import main

sys.exit(main())
