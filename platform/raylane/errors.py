"""The errors raylane raises: one small hierarchy, each message names the thing and the way out."""


class RaylaneError(Exception):
    """Base class of every error raylane raises on purpose."""


class ConfigError(RaylaneError):
    """The pipeline configuration is invalid (bad field, bad value, unreadable file)."""


class DataError(RaylaneError):
    """The input data cannot be used (missing file or column, non-numeric feature)."""


class TrainingError(RaylaneError):
    """Training or tuning failed, or produced no usable model."""


class ModelNotFoundError(RaylaneError):
    """A registered model, version or alias does not exist in the MLflow registry."""


class StorageError(RaylaneError):
    """The storage path for checkpoints and datasets cannot be used."""


class TrackingError(RaylaneError):
    """The MLflow tracking store is unreachable or refuses what raylane records."""


class ModelFormatError(RaylaneError):
    """A saved model or checkpoint was written in a format this raylane cannot read."""


class PromotionRefused(RaylaneError):
    """The champion gate refused to move an alias (the candidate is not better, or not comparable)."""
