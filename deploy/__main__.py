"""Entry point of the app folder (what a MONAI Application Package runs): ``python deploy -i ... -o ... -m ...``."""

import sys

from app import main  # the app folder is sys.path[0] when it is run as `python deploy`

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
