import sys

from gal.cli import main

sys.exit(main())
