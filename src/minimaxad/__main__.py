import sys

from minimaxad.cli import main

sys.exit(main())
