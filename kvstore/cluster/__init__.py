"""The pod: placement (shared with the SDK, defined in ``kvstore_wire.placement``) and, later,
membership."""
