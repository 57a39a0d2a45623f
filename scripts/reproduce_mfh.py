"""Reproduce the MFH synthetic experiments (Fig. 2, Fig. 3, Table 2). See --help."""

import sys

from crossdistill.analysis.mfh.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
