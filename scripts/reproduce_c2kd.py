"""Face -> voice C2KD table: ``crossdistill-table run c2kd`` (spec conf/table/c2kd.yaml).

    python scripts/reproduce_c2kd.py [--quick] [--rows ...] [--seeds ...] [--jobs N] [--out DIR]
        [overrides...]

Options as ``crossdistill-table run --help``; see docs/tables.md.
"""

import sys

from crossdistill.tables.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "c2kd", *sys.argv[1:]]))
