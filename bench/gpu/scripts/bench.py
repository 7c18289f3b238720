"""Run `ocr-stream bench` with synthetic pages loaded from JPEG files (no pymupdf on the device).
usage: python3 .gpu/bench.py PAGES_DIR <ocr-stream bench args...>"""
import sys
from pathlib import Path

from ocr_stream.engines.base import PageImage
import ocr_stream.bench.server as server

d = Path(sys.argv[1])
from PIL import Image
pages = []
for f in sorted(d.glob("*.jpg")):
    data = f.read_bytes()
    w, h = Image.open(f).size
    pages.append(PageImage(data=data, width=w, height=h, content_type="image/jpeg"))
server.synthetic_pages = lambda *a, **k: pages
import argparse, logging
import ocr_stream.bench as bench
from ocr_stream.config import load_settings
p = argparse.ArgumentParser()
bench.configure(p)
args = p.parse_args(sys.argv[2:])
logging.basicConfig(level=logging.WARNING)
sys.exit(bench.run(args, load_settings()))
