"""onnxopt: an ONNX graph-rewriting pass framework whose results are checked in ONNX Runtime."""

from .api import optimize, run_pipeline
from .errors import BadInputError, CheckFailedError, OnnxoptError, PassFailedError, UsageError
from .ir import fingerprint, load, save
from .pass_base import Numerics, Pass, PassContext, PassResult
from .pipeline import parse as parse_pipeline
from .registry import default_pipeline, lossless_pass_names, pass_names, register_pass
from .rewrite import RewriteRule, Rewriter, apply_rules
from .version import __version__

__all__ = [
    "optimize", "run_pipeline", "load", "save", "fingerprint", "parse_pipeline",
    "Pass", "PassContext", "PassResult", "Numerics", "register_pass", "pass_names",
    "lossless_pass_names", "default_pipeline", "RewriteRule", "Rewriter", "apply_rules",
    "OnnxoptError", "UsageError", "BadInputError", "CheckFailedError", "PassFailedError", "__version__",
]
