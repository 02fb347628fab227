"""Export pruned models to ONNX (and TensorRT engines where TensorRT and a GPU exist)."""
