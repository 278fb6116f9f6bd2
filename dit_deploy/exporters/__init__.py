"""PyTorch -> ONNX export (split or fused graphs), validated against PyTorch."""
