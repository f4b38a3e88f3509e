"""`python -m app`: the one way to run the app, from a checkout or from the installed wheel."""

import sys

from app.main import main

sys.exit(main())
