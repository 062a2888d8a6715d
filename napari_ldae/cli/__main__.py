"""``python -m napari_ldae.cli``."""

import sys

from napari_ldae.cli import main

sys.exit(main())
