"""``python -m relaxplug``: the ``relaxplug`` command line."""

import sys

from relaxplug.cli import main

sys.exit(main())
