"""FP16/INT8 graphs for an export directory, verified on the CPU. See --help."""

import sys

from dit_deploy.precision.cli import main

if __name__ == "__main__":
    sys.exit(main())
