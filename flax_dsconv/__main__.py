"""``python -m flax_dsconv ...``: the ``flax-dsconv`` command without the installed script."""

import sys

from flax_dsconv.tools.cli import main

sys.exit(main())
