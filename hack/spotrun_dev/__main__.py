import sys

from spotrun_dev.cli import main

sys.exit(main())
