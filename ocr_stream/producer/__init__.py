"""The producer: documents (PDF, PNG, JPEG, TIFF, WebP) → page images in storage → one page event
per page on ``ocr.pages``. ``submit`` is the library, ``cli`` the ``ocr-stream submit`` command,
``splitter`` the service that does the same for document requests on ``ocr.documents.requests``."""

from .detect import DocType, detect_type
from .limits import Limits
from .render import PageSource, RenderedPage, RenderSpec, open_source
from .submit import ProducerMetrics, SubmitOptions, SubmitResult, Submitter, page_count_of

__all__ = [
    "DocType",
    "Limits",
    "PageSource",
    "ProducerMetrics",
    "RenderSpec",
    "RenderedPage",
    "SubmitOptions",
    "SubmitResult",
    "Submitter",
    "detect_type",
    "open_source",
    "page_count_of",
]
