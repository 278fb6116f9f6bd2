"""``python -m dit_deploy <verb> ...``: the same as ``dit-deploy <verb> ...``."""

from .cli import main

raise SystemExit(main())
