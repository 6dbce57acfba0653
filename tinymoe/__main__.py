import sys

from tinymoe.cli import main

sys.exit(main())
