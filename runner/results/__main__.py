import sys

from runner.results.cli.main import main

sys.exit(main())
