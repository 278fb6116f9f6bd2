"""Export a DIT model to ONNX and validate it against PyTorch. See --help."""

import sys

from dit_deploy.exporters.cli import main

if __name__ == "__main__":
    sys.exit(main())
