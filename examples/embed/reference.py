#!/usr/bin/env python3
"""Writes tests/fixtures/reference.json: embeddings of fixed sentences by the reference
implementation (sentence-transformers), from the same model files the example loads.

Run once (it needs `pip install sentence-transformers`, which pulls in torch):
    python3 examples/embed/reference.py examples/embed/model > examples/embed/tests/fixtures/reference.json
"""
import json
import sys

import sentence_transformers
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The cat sits outside.",
    "A monkey is playing drums.",
    "GPU inference on demand scales to zero when idle.",
    "",
    "Serverless GPU functions start instances when requests arrive, and stop them when they are idle, "
    "so a card is only paid for while it does work; this sentence is long to exercise padding.",
]

model = SentenceTransformer(sys.argv[1], device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
json.dump({
    "model": "all-MiniLM-L6-v2",
    "reference": f"sentence-transformers {sentence_transformers.__version__}",
    "sentences": SENTENCES,
    "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
}, sys.stdout)
print()
