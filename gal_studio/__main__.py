"""``python -m gal_studio [flags]``: the web app (the same as ``gal app`` and ``python app.py``)."""

import sys

from gal_studio.app import main

sys.exit(main())
