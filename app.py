"""``python app.py [flags]``: GAL Studio's web app, run from a checkout (``./run.sh app`` calls it).

The app's code is ``gal_studio/app.py``, installed with the package, so ``gal app`` works from any
folder; this file only forwards to it.
"""

import sys

from gal_studio.app import main

if __name__ == "__main__":
    sys.exit(main())
