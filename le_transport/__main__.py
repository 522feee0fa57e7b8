"""``python -m le_transport``: the ``le-transport`` command (``demo``, ``simulate``)."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
