"""Compile an export's typed ONNX graphs into TensorRT engines (GPU machines): the same as
``dit-deploy engines``. See --help."""

import sys

from dit_deploy.cli import verb_main

main = verb_main("engines")

if __name__ == "__main__":
    sys.exit(main())
