"""The one lock around PDFium.

PDFium is not thread-safe, not even across different documents, so every pypdfium2 call in the
process (embedded-XML lookup, text probes, rendering for OCR) holds this lock.
"""

import threading

LOCK = threading.Lock()
