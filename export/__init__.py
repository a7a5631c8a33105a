"""Everything in edgeseg that needs torch: networks, nnU-Net v2 import, ONNX export, INT8."""
