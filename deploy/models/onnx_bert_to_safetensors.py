"""Turns a sentence-transformers BERT exported to ONNX into the Hugging Face layout the embedder
loads (model.safetensors with BertModel's tensor names, and config.json).

    onnx_bert_to_safetensors.py MODEL.onnx OUT_DIR --layers N --heads H

The export keeps the embeddings' and the biases' names (`model.0.auto_model.<name>`) but renames
each dense layer's weight (`onnx::MatMul_<n>`, stored [in, out]). A weight is named after the
bias its MatMul's output is added to (`<layer>.bias` -> `<layer>.weight`) and transposed to
BertModel's [out, in]. Every tensor of BertModel must come out exactly once, or the conversion
fails. The output is deterministic, so its sha256 can be pinned.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file

PREFIX = "model.0.auto_model."


def convert(model_path, out_dir, layers, heads):
    graph = onnx.load(model_path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    tensors = {}
    for name, array in inits.items():
        if name.startswith(PREFIX):
            tensors[name[len(PREFIX):]] = array
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((i for i in node.input if i in inits and not i.startswith(PREFIX)), None)
        if weight is None:
            continue  # attention's activations, not a dense layer
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i.startswith(PREFIX) and i.endswith(".bias")]
        if len(biases) != 1:
            sys.exit(f"MatMul {node.name}: expected one bias added to its output, got {biases}")
        name = biases[0][len(PREFIX):-len(".bias")] + ".weight"
        if name in tensors:
            sys.exit(f"{name} named twice")
        tensors[name] = np.ascontiguousarray(inits[weight].T)

    words = tensors["embeddings.word_embeddings.weight"]
    hidden = words.shape[1]
    intermediate = tensors["encoder.layer.0.intermediate.dense.weight"].shape[0]
    expected = {
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    }
    for i in range(layers):
        for part in (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ):
            expected |= {f"encoder.layer.{i}.{part}.weight", f"encoder.layer.{i}.{part}.bias"}
    got = set(tensors)
    if got != expected:
        sys.exit(f"tensors missing: {sorted(expected - got)}; unexpected: {sorted(got - expected)}")

    os.makedirs(out_dir, exist_ok=True)
    save_file(
        {k: tensors[k].astype(np.float32) for k in sorted(tensors)},
        os.path.join(out_dir, "model.safetensors"),
    )
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": tensors["embeddings.position_embeddings.weight"].shape[0],
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "position_embedding_type": "absolute",
        "type_vocab_size": tensors["embeddings.token_type_embeddings.weight"].shape[0],
        "vocab_size": words.shape[0],
    }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    args = argparse.ArgumentParser()
    args.add_argument("model")
    args.add_argument("out_dir")
    args.add_argument("--layers", type=int, required=True)
    args.add_argument("--heads", type=int, required=True)
    a = args.parse_args()
    convert(a.model, a.out_dir, a.layers, a.heads)
