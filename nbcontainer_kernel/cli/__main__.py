"""`python -m nbcontainer_kernel.cli`: the `nbcontainer` command."""

import sys

from . import main

sys.exit(main())
