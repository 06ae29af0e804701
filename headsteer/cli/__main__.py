"""``python -m headsteer.cli``: the same as the ``headsteer`` command."""

import sys

from headsteer.cli import main

sys.exit(main())
