"""Where the tests find the prepared IMDB copy; the tests that read it skip without it."""

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path | None:
    """A TFDS data directory holding imdb_reviews: $TFDS_DATA_DIR, else ../shared/tfds."""
    repo = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("TFDS_DATA_DIR"), repo.parent / "shared" / "tfds"):
        if candidate and any(Path(candidate).glob("imdb_reviews/plain_text/*/dataset_info.json")):
            return Path(candidate)
    return None


DATA_DIR = shared_data_dir()
NO_DATA = "no prepared imdb_reviews in $TFDS_DATA_DIR or ../shared/tfds"
needs_data = pytest.mark.skipif(DATA_DIR is None, reason=NO_DATA)
