"""Shards (docs/design.md §2.3, §2.4): schema, pure shard plan, deterministic writer, verifier, streaming
loader.

Import the submodules directly (``mvforge.shards.loader`` pulls in torch; the others do not).
"""
