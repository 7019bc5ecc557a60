"""`python -m vlmnb ...` is the `vlmnb` command (handy under `accelerate launch -m vlmnb train ...`)."""
import sys

from vlmnb.cli import main

sys.exit(main())
