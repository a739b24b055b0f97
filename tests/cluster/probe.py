"""What the cluster tests ask from the rig's client host, printed as one JSON line.

    python -m tests.cluster.probe runs EXPERIMENT          # runs, tags and metric histories
    python -m tests.cluster.probe model NAME [ALIAS]       # versions, the alias, its history tag
    python -m tests.cluster.probe objects BUCKET PREFIX    # object keys in the rig's S3
    python -m tests.cluster.probe actors CLASS_PREFIX      # Ray actors by class, with their node IPs
    python -m tests.cluster.probe job SUBMISSION_ID        # a job's status and logs
    python -m tests.cluster.probe predict URL TOKEN        # POST a V1 request; status and body

It runs on the client host (a workstation: no Ray node there) and talks to the MLflow server, S3 and
the head's dashboard over the rig's network, as a user's tools would.
"""

from __future__ import annotations

import json
import os
import sys

import httpx


def runs(experiment: str) -> list[dict]:
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    out = []
    for run in client.search_runs([found.experiment_id], max_results=1000):
        histories = {key: [(m.step, m.value, m.timestamp)
                           for m in client.get_metric_history(run.info.run_id, key)]
                     for key in run.data.metrics}
        out.append({"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                    "parent": run.data.tags.get("mlflow.parentRunId"), "tags": run.data.tags,
                    "params": run.data.params, "metrics": histories,
                    "start": run.info.start_time, "end": run.info.end_time})
    return out


def model(name: str, alias: str = "champion") -> dict:
    from mlflow import MlflowClient

    client = MlflowClient()
    versions = client.search_model_versions(f"name='{name}'")
    registered = client.get_registered_model(name)
    holder = registered.aliases.get(alias)
    return {"versions": [{"version": v.version, "run_id": v.run_id, "source": v.source, "tags": v.tags,
                          "metrics": client.get_run(v.run_id).data.metrics} for v in versions],
            "alias": holder, "tags": registered.tags,
            "artifact_uri": client.get_model_version_download_uri(name, holder) if holder else None}


def objects(bucket: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    keys, token = [], None
    while True:
        more = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **more)
        keys += [item["Key"] for item in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def actors(class_prefix: str) -> list[dict]:
    """Every actor (alive or dead) whose class name starts with `class_prefix`, with its node's IP:
    Ray's State API on the head's dashboard, token auth included."""
    from ray.util.state import list_actors, list_nodes

    address = os.environ["RAY_ADDRESS"]
    ips = {node.node_id: node.node_ip for node in list_nodes(address=address, limit=1000, detail=True)}
    found = list_actors(address=address, limit=10000, detail=True, raise_on_missing_output=False)
    return [{"class": a.class_name, "state": a.state, "ip": ips.get(a.node_id), "pid": a.pid,
             "job_id": a.job_id, "actor_id": a.actor_id, "placement_group": a.placement_group_id}
            for a in found if (a.class_name or "").startswith(class_prefix)]


def job(submission_id: str) -> dict:
    """A job's status and its logs so far, from the head's job server."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
    info = client.get_job_info(submission_id)
    return {"status": str(info.status.value), "logs": client.get_job_logs(submission_id),
            "ray_job_id": info.driver_info.id if info.driver_info else None,
            "start": info.start_time, "end": info.end_time}


def predict(url: str, token: str, rows: int = 2) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = httpx.post(url, json={"instances": [[0.0] * 64] * rows}, headers=headers, timeout=60)
    return {"status": reply.status_code, "body": reply.text[:2000]}


def main(argv: list[str]) -> None:
    command, *args = argv
    result = {"runs": runs, "model": model, "objects": objects, "actors": actors, "job": job,
               "predict": predict}[command](*args)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
