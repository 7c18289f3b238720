"""ocr-stream's benchmark suite (``make bench`` / ``python -m bench``): see bench/README.md.

Not part of the product package: it drives the product (producer, ``ocr-stream worker``,
``ocr-stream aggregator``, ``ocr-stream simulate-vllm``) as separate processes through the real
broker and object store, and compares each figure with one measured beside it in the same run.
"""
