"""Export a DIT model to ONNX and validate it against PyTorch. See --help."""

import sys

from dit_deploy.cli import verb_main

main = verb_main("export")

if __name__ == "__main__":
    sys.exit(main())
