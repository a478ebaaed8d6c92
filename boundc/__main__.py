"""``python -m boundc``: the ``boundc`` command line."""

import sys

from boundc.cli import main

sys.exit(main())
