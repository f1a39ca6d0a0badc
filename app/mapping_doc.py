"""Render ``docs/mapping.md`` from :data:`domain.mapping_table.MAPPING_TABLE`.

``python -m app.mapping_doc --write docs/mapping.md`` rewrites the file; without arguments it prints it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from domain.mapping_table import render
from domain.terminology_tables import CODING_SCHEMES


def mapping_document() -> str:
    return render(CODING_SCHEMES)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write"] and len(args) == 2:
        Path(args[1]).parent.mkdir(parents=True, exist_ok=True)
        Path(args[1]).write_text(mapping_document())
    else:
        print(mapping_document())
    return 0


if __name__ == "__main__":
    sys.exit(main())
