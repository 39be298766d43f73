"""Exceptions raised by lolcats_core; each message says what is wrong and how to fix it."""


class LolcatsError(Exception):
    """Base class of every lolcats error."""


class ConfigError(LolcatsError, ValueError):
    """A linearization, training or run configuration is invalid."""


class UnsupportedModelError(LolcatsError, ValueError):
    """The model's architecture cannot be linearized."""


class CheckpointError(LolcatsError, ValueError):
    """A checkpoint is malformed, tampered with, or does not match its base model."""
