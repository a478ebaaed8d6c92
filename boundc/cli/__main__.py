"""``python -m boundc.cli``: the ``boundc`` command line (same as ``python -m boundc``)."""

import sys

from boundc.cli import main

sys.exit(main())
