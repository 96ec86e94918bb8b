"""``python -m TAVIRegistrationLib.cli``: the ``tavireg`` command."""

import sys

from . import main

sys.exit(main())
