"""The worker: one model on one device, served over HTTP.

``engine`` runs the ONNX graph with a KV cache per slot; ``sampling`` picks tokens; ``text`` turns
tokens into text pieces and finds stop strings; ``batch`` decodes every active sequence in one
engine step (continuous batching); ``scheduler`` feeds that loop from trio; ``app`` is the HTTP API;
``daemon`` binds, loads the model and serves (``rbee worker daemon``, in `rbee.cli.worker`).
"""
