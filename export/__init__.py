"""export — torch → ONNX, ONNX → TensorRT engine, parity verification."""
