"""Export the screening classifier for serving: ONNX (checked against torch) and a Triton repository."""
