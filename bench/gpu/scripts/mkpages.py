import sys
from ocr_stream.bench.server import synthetic_pages
for name, w, h in (("pages_full", 1024, 1325), ("pages_small", 494, 640)):
    for i, p in enumerate(synthetic_pages(8, width=w, height=h)):
        open(f".gpu/{name}/{i}.jpg", "wb").write(p.data)
        print(name, i, p.width, p.height, len(p.data))
