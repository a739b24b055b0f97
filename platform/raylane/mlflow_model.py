"""Where models logged before the `raylane.model` package name their pyfunc class.

MLflow pickles a logged model's class by its import path; versions registered by an earlier
raylane say `raylane.mlflow_model.RaylaneClassifier`. This name keeps them loadable (a rollback
to one of them, a replica that serves it). New models name `raylane.model.pyfunc`.
"""

from raylane.model.pyfunc import RaylaneClassifier

__all__ = ["RaylaneClassifier"]
