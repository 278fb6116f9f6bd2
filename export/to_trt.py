"""Compile an export's typed ONNX graphs into TensorRT engines (GPU machines). See --help."""

import sys

from dit_deploy.precision.trt_cli import main

if __name__ == "__main__":
    sys.exit(main())
