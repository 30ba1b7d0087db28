"""``python -m slmops.toolkit.cli``: the ``slmops`` command."""

import sys

from slmops.toolkit.cli import main

sys.exit(main())
