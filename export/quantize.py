"""FP16/INT8 graphs for an export directory, verified on the CPU. See --help."""

import sys

from dit_deploy.cli import verb_main

main = verb_main("quantize")

if __name__ == "__main__":
    sys.exit(main())
