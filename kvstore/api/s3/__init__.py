"""S3-compatible HTTP surface as a raw ASGI app (``kvstore.api.s3.app.S3App``)."""
