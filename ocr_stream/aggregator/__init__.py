"""The aggregator: page results into completed documents, exactly once.

    state.py         pure: (progress, page result) → new progress; dedup, completion, deadlines
    assemble.py      pure: page outcomes in page order → document.md / document.json bytes
    partitioning.py  pure: Kafka's murmur2 partitioner (which changelog partition holds a doc_id)
    service.py       AggregatorService (consumer group + transactions + storage), read_progress()
    metrics.py       Prometheus metrics (ocr_stream_aggregator_*)
    cli.py           ``ocr-stream aggregator``
"""
