"""What a logged model needs to load and predict, and nothing else: no Ray, no training code.

    network.py      the networks (torch MLP, Keras MLP) and their spec
    checkpoint.py   a checkpoint directory's files: weights, spec, epoch history, format version
    pyfunc.py       the MLflow pyfunc model: raw columns in, preprocessing and network inside

A Serve replica, `mlflow.pyfunc.load_model` and `mlflow models serve` import only this package
(and `raylane.preprocess`, `raylane.task`, `raylane.errors`); a test proves it in a process where
`import ray` fails.
"""
