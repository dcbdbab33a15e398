"""User-facing errors: the CLI prints them as one line and exits 2, without a traceback (docs/design.md
§5)."""


class UserError(Exception):
    """Bad input from the user. The message names the problem and the fix, on one line."""


class ConfigError(UserError):
    """A config file or ``--set`` override that does not match the config dataclasses."""


class ShardDamaged(UserError):
    """A shard that fails its index.json entry (sha256, or missing) under ``loader.on_checksum_mismatch = "stop"``:
    ``mvtrain fit`` checkpoints the last finished step before it stops (in-process runs; docs/reliability.md)."""
