import sys

from testhosts.cli import main

sys.exit(main())
