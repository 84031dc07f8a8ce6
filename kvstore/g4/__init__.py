"""G4: the object-store tier below flash (issue 13). ``G4Tier`` implements the engine's
``LowerTier`` seam (``engine/tiers.py``); ``ObjectStore`` is its client (obstore)."""

from kvstore.g4.store import G4Unavailable, ObjectStore, S3Target
from kvstore.g4.tier import G4Tier

__all__ = ["G4Tier", "G4Unavailable", "ObjectStore", "S3Target"]
