"""`python -m engine_host.cli`, as the `hd` script."""

import sys

from engine_host.cli.app import main

sys.exit(main())
