"""Engine connectors for kvstore: vLLM, LMCache, SGLang HiCache and Dynamo reach the store
through the client SDK (``kvstore_client``), each behind its own extra of the client
distribution (``pip install 'kvstore-client[vllm]'``).

Every connector derives its keys with ``kvstore_connectors.keys`` (deterministic, never
Python's ``hash()``), binding the model, dtype, KV layout, tensor-parallel rank and the engine's
cache salt. Importing this package imports no engine: each engine module imports its own.
"""
