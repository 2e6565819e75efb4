import sys

from mop.cli import main

sys.exit(main())
