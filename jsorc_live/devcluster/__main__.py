"""`python -m jsorc_live.devcluster --kubeconfig FILE ...`: the same as `jsorc devcluster`."""

import sys

from jsorc_live.cli import main

if __name__ == "__main__":
    sys.exit(main(["devcluster", *sys.argv[1:]]))
