"""Request parsing and response building for the three inference protocols, free of Ray and HTTP.

    KServe V1      POST /v1/models/{name}:predict          {"instances": [[...], ...]}       v1.py
    Open Inference POST /v2/models/{name}[/versions/{v}]/infer                               v2.py
                   {"inputs": [{name, shape, datatype, data}]}, JSON or JSON plus binary tensors
    MLflow scoring POST /invocations                        {"dataframe_split" |             invocations.py
                   "dataframe_records" | "instances" | "inputs": ...} or text/csv

Each parser returns the rows as a float matrix in the model's column order (an all-numeric model),
or as a DataFrame of the raw columns by name (a model with categorical or boolean columns, whose
preprocessor types, imputes and encodes them), or raises a `raylane.serving.errors` type with a
message that names the offending field. What every protocol does around the model call is in
rows.py. An image model takes one image per row on every protocol, base64 text or raw bytes, and
one image as a raw image/png or image/jpeg body: images.py.
"""
