"""ocr-stream: documents to Markdown and JSON with DeepSeek-OCR on vLLM, through Kafka."""

__version__ = "0.1.0"
