"""Rewrite <name>.expected.json from the parser's current output for every <name>.txt here.

Only run this after a deliberate change of the parser's output, and review the diff by hand:
the expected files are the contract the golden tests hold the parser to.

    .venv/bin/python tests/data/goldens/regenerate.py
"""

from __future__ import annotations

import json
from pathlib import Path

from ocr_stream.engines.parsing import parse_output

HERE = Path(__file__).parent
# Page image size the goldens are parsed for: an A4 page rendered at 1,600 px on the long side.
WIDTH, HEIGHT, PAGE_NO = 1131, 1600, 3


def expected_for(raw: str) -> dict[str, object]:
    page = parse_output(raw, WIDTH, HEIGHT, page_no=PAGE_NO)
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "page_no": PAGE_NO,
        "malformed": page.malformed,
        "markdown": page.markdown,
        "blocks": [b.model_dump(mode="json") for b in page.blocks],
        "figures": [{"name": f.name, "box": list(f.box) if f.box else None} for f in page.figures],
    }


if __name__ == "__main__":
    for raw_path in sorted(HERE.glob("*.txt")):
        out = raw_path.with_suffix(".expected.json")
        out.write_text(json.dumps(expected_for(raw_path.read_text(encoding="utf-8")), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(out.name)
