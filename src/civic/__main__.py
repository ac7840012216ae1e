"""``python -m civic``: the same as the ``civic`` command."""

import sys

from civic.cli.main import main

sys.exit(main())
