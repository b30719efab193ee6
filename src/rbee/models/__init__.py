"""Models: the on-disk store, GGUF import and the ONNX graph builder.

`DEFAULT_MODEL` lives here, apart from the importer, so that the daemons that only name it (the
hive) start without importing numpy, gguf and onnx.
"""

__all__ = ["DEFAULT_MODEL"]

DEFAULT_MODEL = "smollm2-135m-instruct"
