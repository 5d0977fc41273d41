import sys

from adcore_runtime.cli import main

sys.exit(main())
