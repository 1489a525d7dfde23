#!/usr/bin/env python3
"""Reference embedder benchmark: sentence-transformers (PyTorch, CPU).

Builds all-MiniLM-L6-v2 exactly as sentence-transformers defines it
(BERT -> mean pooling -> L2 normalisation, max_seq_length 256) from a local
Hugging Face model directory, fully offline, times `model.encode` over a text
file and prints ONE JSON line to stdout.  Everything else goes to stderr.

Run it with the venv made by bench/st_venv.sh:

    PY=$(bash bench/st_venv.sh)
    "$PY" bench/st_embed.py --model-dir .tools/models/all-minilm-l6-v2 \
        --texts texts.jsonl --batch-size 32 --repeat 3 [--threads N] [--dump out.jsonl]
"""

import argparse
import json
import os
import statistics
import sys
import time

# Never touch the network: the model comes from --model-dir only.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", required=True, help="HF layout dir (config.json, tokenizer.json, model.safetensors, ...)")
    p.add_argument("--texts", required=True, help='JSON lines {"text": ...}; non-JSON lines are taken verbatim')
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3, help="timed runs over all texts")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch default)")
    p.add_argument("--max-seq-length", type=int, default=256, help=argparse.SUPPRESS)
    p.add_argument("--dump", default=None, help="write embeddings of the first --dump-n texts as JSON lines {text, embedding}")
    p.add_argument("--dump-n", type=int, default=16, help="how many texts --dump writes (default 16)")
    return p.parse_args()


def read_texts(path):
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                texts.append(line)
                continue
            if isinstance(obj, dict):
                if isinstance(obj.get("text"), str):
                    texts.append(obj["text"])
                # a dict without "text" is metadata (e.g. a golden file's header): skip
            elif isinstance(obj, str):
                texts.append(obj)
            else:
                texts.append(line)  # e.g. a line that happens to be a bare number
    if not texts:
        sys.exit(f"no texts in {path}")
    return texts


def main():
    args = parse_args()
    texts = read_texts(args.texts)

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    import sentence_transformers
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # older releases
        from sentence_transformers.models import Normalize, Pooling, Transformer
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except Exception:
        pass

    model_dir = os.path.abspath(args.model_dir)
    word = Transformer(model_dir, max_seq_length=args.max_seq_length)
    dim_fn = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = Pooling(dim_fn(), pooling_mode="mean")
    model = SentenceTransformer(modules=[word, pooling, Normalize()], device="cpu")
    model.eval()

    def encode(batch):
        return model.encode(
            batch,
            batch_size=args.batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
        )

    encode(texts[:8])  # warm-up

    runs = []
    emb = None
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        emb = encode(texts)
        runs.append(time.perf_counter() - t0)

    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            for text, vec in zip(texts[: args.dump_n], emb[: args.dump_n]):
                f.write(json.dumps({"text": text, "embedding": [round(float(x), 7) for x in vec]}) + "\n")

    median = statistics.median(runs)
    print(
        json.dumps(
            {
                "impl": "sentence-transformers",
                "torch": torch.__version__,
                "st": sentence_transformers.__version__,
                "threads": torch.get_num_threads(),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "n": len(texts),
                "batch_size": args.batch_size,
                "max_seq_length": model.max_seq_length,
                "dim": int(emb.shape[1]),
                "runs_s": [round(r, 6) for r in runs],
                "median_s": round(median, 6),
                "texts_per_s": round(len(texts) / median, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
