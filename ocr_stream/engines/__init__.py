"""OCR engines behind one interface (base.Engine): DeepSeek-OCR over an OpenAI-compatible server,
embedded Tesseract, optional RapidOCR."""

from .base import Engine, OcrOutput, OcrRequest, PageImage

__all__ = ["Engine", "OcrOutput", "OcrRequest", "PageImage"]
