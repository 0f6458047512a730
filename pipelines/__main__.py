"""`python -m pipelines` and the file spark-submit runs: `spark-submit --master URL <this file> run CONF`."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main())
