"""Text -> image table: ``crossdistill-table run text_image`` (conf/table/text_image.yaml).

    python scripts/reproduce_text_image.py [--quick] [--rows ...] [--seeds ...] [--jobs N]
        [--out DIR] [overrides...]

Options as ``crossdistill-table run --help``; see docs/tables.md.
"""

import sys

from crossdistill.tables.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "text_image", *sys.argv[1:]]))
