"""Compile an export's typed ONNX graphs into TensorRT engines (GPU machines): the same as
``dit-deploy engines``. See --help."""

import sys

from dit_deploy.engines.cli import main

if __name__ == "__main__":
    sys.exit(main())
