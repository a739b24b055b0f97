#!/usr/bin/env bash
# raylane's one install command. `make venv` runs it (so CI does, through `make test`), and so does
# deploy/docker/Dockerfile: the image installs raylane exactly as the tested checkout does.
#
#   deploy/install.sh PYTHON EXTRAS [PIP_OPTION...]
#   deploy/install.sh .venv/bin/python torch,tf,dev --quiet     # make venv
#   deploy/install.sh python torch,tf,server                    # the image
#
# constraints.txt pins torch, TensorFlow, Ray and MLflow to the tested versions. Which build of
# torch satisfies the pin is the package index's business: the image adds PyTorch's CPU or CUDA
# index through PIP_EXTRA_INDEX_URL, whose 2.13.0+cpu or 2.13.0+cu130 match `torch==2.13.0`
# (a local version label is ignored when matching a pin without one).
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: deploy/install.sh PYTHON EXTRAS [PIP_OPTION...]   e.g. .venv/bin/python torch,tf,dev" >&2
    exit 2
fi
python=$1 extras=$2
shift 2
if [[ $python == */* ]]; then  # a relative path names a file from where we were called
    python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."

"$python" -m pip install "$@" --upgrade pip
"$python" -m pip install "$@" -c constraints.txt -e ".[$extras]"
