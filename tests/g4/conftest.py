"""One SeaweedFS (``weed server -s3`` on 127.0.0.1, ``kvstore.testing_s3``) for the G4 tests:
started once, it takes seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvstore.testing_s3 import SeaweedS3


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedS3]:
    s3 = SeaweedS3().start()
    yield s3
    s3.close()
