"""``python -m armsdyn``: the same as the ``armsdyn`` command."""

import sys

from armsdyn.cli import main

sys.exit(main())
