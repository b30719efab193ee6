"""Models: the on-disk store, GGUF import and the ONNX graph builder."""
