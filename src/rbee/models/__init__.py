"""Models: the on-disk store, GGUF import and the ONNX graph builder.

`DEFAULT_MODEL` and `default_precision` live here, apart from the importer, so that the daemons
that only name them (the hive, a worker before its model loads) start without importing numpy,
gguf and onnx.
"""

__all__ = ["DEFAULT_MODEL", "default_precision"]

DEFAULT_MODEL = "smollm2-135m-instruct"


def default_precision(device: str) -> str:
    """The graph a worker on ``device`` runs unless told otherwise: ``fp16`` on a GPU (ONNX
    Runtime's CUDA attention kernels take half precision only), ``int4`` on the CPU (fastest
    there)."""
    return "fp16" if device.startswith("cuda") else "int4"
