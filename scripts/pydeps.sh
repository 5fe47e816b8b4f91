#!/usr/bin/env bash
# Installs the Python clients the KMS server tests drive, into a virtual
# environment of their own (KMSFS_PYENV, default target/pyenv): the AWS CLI
# and boto3 (real AWS clients against `kmsfs kms serve`) and moto's server
# (an independent KMS implementation for the client). A venv keeps them off
# the system Python, which Debian marks as externally managed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${KMSFS_PYENV:-$PWD/target/pyenv}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import boto3, awscli, moto, flask' 2>/dev/null; then
  exit 0
fi
command -v python3 >/dev/null || bash scripts/deps.sh python3
python3 -m venv "$venv" 2>/dev/null || { bash scripts/deps.sh python3-venv && python3 -m venv "$venv"; }
echo "installing awscli, boto3 and moto[server] into $venv" >&2
for i in 1 2 3; do
  if "$venv/bin/python" -m pip install -q --disable-pip-version-check awscli boto3 'moto[server]'; then
    exit 0
  fi
  echo "pip install failed; retrying in 10 s" >&2
  sleep 10
done
echo "could not install the Python test clients (awscli, boto3, moto[server])" >&2
exit 1
