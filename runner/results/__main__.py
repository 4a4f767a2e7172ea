import sys

from runner.results.cli import main

sys.exit(main())
