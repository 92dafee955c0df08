"""python -m fxroof.cli"""
from fxroof.cli.main import main

raise SystemExit(main())
