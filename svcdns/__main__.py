import sys

from .cli import main

if __name__ == "__main__":  # guarded: DNS workers are spawned processes that import the main module
    sys.exit(main())
