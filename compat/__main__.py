import sys

from ._runner import main

raise SystemExit(main(sys.argv[1:]))
