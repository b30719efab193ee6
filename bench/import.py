"""Peak memory and time of `rbee model import`, each import in a fresh process.

    python bench/import.py                       # the default model, both precisions
    python bench/import.py --gguf FILE.gguf      # any GGUF
    python bench/import.py --synthetic-3b        # a llama-shaped ~3B-parameter Q8_0 GGUF, written
                                                 # tensor by tensor into a temporary directory
    python bench/import.py --synthetic-3b --embedding Q4_0   # its token table (also the output
                                                 # projection) in another type
    python bench/import.py --answer ...          # then load each graph and decode 8 tokens

Prints one line per precision set: seconds, peak RSS of the importing process (``ru_maxrss``,
which counts the pages of the memory-mapped GGUF it touched), and the size of what it wrote.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gguf import GGMLQuantizationType

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.models.helpers import LlamaShape, write_llama_shaped_gguf  # noqa: E402

_CHILD = """
import resource
import sys
from pathlib import Path
from rbee.models.importer import import_gguf
from rbee.models.store import ModelStore
manifest = import_gguf(ModelStore(Path(sys.argv[1])), Path(sys.argv[2]), name="bench",
                       precisions=sys.argv[3].split(","))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[4] == "answer":
    import time
    from rbee.worker.engine import Engine
    store = ModelStore(Path(sys.argv[1]))
    start = time.perf_counter()
    engine = Engine(store.dir("bench"), manifest, precision=manifest.precisions[0], slots=1)
    loaded = time.perf_counter() - start
    logits = engine.prefill(0, [1, 2, 3, 4])
    tokens = [int(logits.argmax())]
    for _ in range(7):
        tokens.append(int(engine.decode([0], [tokens[-1]])[0].argmax()))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"worker engine: loaded in {loaded:.1f} s, 8 tokens {tokens}, peak RSS {rss / 1024:.0f} MB",
          file=sys.stderr)
print(manifest.size_bytes, peak)
"""

# Llama 3.2 3B's shape: 3.2B parameters.
_3B = LlamaShape(layers=28, hidden=3072, ffn=8192, heads=24, kv_heads=8, vocab=128256)


def measure(gguf: Path, precisions: str, answer: bool) -> None:
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, store, str(gguf), precisions, "answer" * answer],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        written, peak = map(int, out.stdout.split())
        sys.stdout.write(out.stderr)
    print(
        f"{gguf.name} [{precisions}]: {seconds:.1f} s, peak RSS {peak / 1024:.0f} MB, "
        f"file {gguf.stat().st_size / 1e6:.0f} MB, wrote {written / 1e6:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF to import (default: the default model)")
    parser.add_argument("--synthetic-3b", action="store_true", help="a ~3B Q8_0 llama instead")
    parser.add_argument(
        "--embedding",
        choices=["Q8_0", "Q4_0"],
        default="Q8_0",
        help="the synthetic model's token table type (default Q8_0)",
    )
    parser.add_argument(
        "--precisions", action="append", help="comma-separated set, repeatable (default: each)"
    )
    parser.add_argument(
        "--answer", action="store_true", help="then load the graph and decode 8 tokens"
    )
    args = parser.parse_args()
    sets = args.precisions or ["int4", "fp32", "int4,fp32"]
    with tempfile.TemporaryDirectory() as scratch:
        if args.synthetic_3b:
            embedding = GGMLQuantizationType[args.embedding]
            gguf = write_llama_shaped_gguf(
                Path(scratch) / f"synthetic-llama-3b.Q8_0.{embedding.name}-embedding.gguf",
                _3B,
                GGMLQuantizationType.Q8_0,
                embedding,
            )
        elif args.gguf is not None:
            gguf = args.gguf
        else:
            from rbee.models.importer import default_model_path

            gguf = default_model_path()
        for precisions in sets:
            measure(gguf, precisions, args.answer)


if __name__ == "__main__":
    main()
