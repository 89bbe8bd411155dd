import sys

from thresh_opt.cli import main

sys.exit(main())
