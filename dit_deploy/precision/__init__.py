"""Precision as a property of the ONNX graph: FP16 and INT8 graphs, checked on the CPU.

- :mod:`.fp16`: FP16 with FP32 islands (onnxconverter-common, op block list).
- :mod:`.int8`: explicit Q/DQ INT8 the way TensorRT takes it (ONNX Runtime ``quantize_static``,
  symmetric, per-channel weights, no INT32 bias), calibrated on streamed (image, expression)
  pairs.
- :mod:`.verify`: each graph against the FP32 graph in ONNX Runtime (CPU): logits error,
  mask agreement, mIoU/oIoU change, latency.
- BF16: an execution precision (OpenVINO runs the FP32 graphs in BF16 on CPUs with BF16
  units), verified like the others and recorded in the manifest (``execution``).
- :mod:`.pipeline`: ``run_quantize`` = convert, verify, and only then write into the export.

TensorRT engines are built from these graphs by :mod:`dit_deploy.engines`; TensorRT 11 takes
precision only from the graph's types and Q/DQ nodes, so everything that
decides the accuracy of an engine is decided, and checked, here on the CPU.

The precisions themselves (graph precisions and the backends' execution precisions) are listed
in one place: :mod:`dit_deploy.runtime.backends.table`.
"""
