"""Built-in passes, installed as ``onnxopt.passes`` and registered through entry points."""
