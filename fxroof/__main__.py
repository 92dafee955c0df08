"""python -m fxroof: the command line."""
from fxroof.cli.main import main

raise SystemExit(main())
