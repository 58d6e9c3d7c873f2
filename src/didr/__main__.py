"""``python -m didr`` is the CLI too, so ``torchrun ... -m didr train ...`` works."""

import sys

from didr.cli import main

sys.exit(main())
