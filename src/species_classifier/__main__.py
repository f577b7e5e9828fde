"""`python -m species_classifier` runs the same command as `species-classifier`."""

import sys

from species_classifier.cli import main

if __name__ == "__main__":
    sys.exit(main())
